package proxy

// grpc-go's xDS package registers its outlier detection balancer (gRFC
// A50, internal to grpc-go), which the hosts of Clusters with outlier
// detection run over their own balancer: the sidecar ejects endpoints
// with the same code as a proxyless client.
import _ "google.golang.org/grpc/xds"
