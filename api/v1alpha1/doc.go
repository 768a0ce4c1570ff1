// Package v1alpha1 holds the ballast.dev/v1alpha1 API types: TrafficPolicy, the one policy type Ballast ships
// while Gateway API has no gRPC timeout or retry field (GEP-3139, GEP-3440). Its fields take Gateway API's
// shapes where one exists (Duration strings, GEP-713 targetRefs), so a later standard type is a rename.
package v1alpha1
