package devcluster

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
)

// envResolver computes a container's environment as the kubelet does:
// envFrom, then env in order with $(VAR) references to earlier entries,
// downward-API fields (including status.podIP, known once the pod has an
// address), ConfigMap and Secret keys.
type envResolver struct {
	configMaps corev1listers.ConfigMapLister
	secrets    corev1listers.SecretLister
}

func (r envResolver) resolve(pod *corev1.Pod, c corev1.Container, podIP string) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := r.configMaps.ConfigMaps(pod.Namespace).Get(from.ConfigMapRef.Name)
			if err != nil {
				if optional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("container %s envFrom configmap %s: %w", c.Name, from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := r.secrets.Secrets(pod.Namespace).Get(from.SecretRef.Name)
			if err != nil {
				if optional(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("container %s envFrom secret %s: %w", c.Name, from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(data)) {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, expand(e.Value, vars))
		case e.ValueFrom.FieldRef != nil:
			v, err := fieldValue(pod, e.ValueFrom.FieldRef.FieldPath, podIP)
			if err != nil {
				return nil, fmt.Errorf("container %s env %s: %w", c.Name, e.Name, err)
			}
			set(e.Name, v)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := r.configMaps.ConfigMaps(pod.Namespace).Get(ref.Name)
			v, ok := "", false
			if err == nil {
				v, ok = cm.Data[ref.Key]
			}
			if !ok && !optional(ref.Optional) {
				return nil, fmt.Errorf("container %s env %s: configmap %s key %s not found", c.Name, e.Name, ref.Name, ref.Key)
			}
			set(e.Name, v)
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, err := r.secrets.Secrets(pod.Namespace).Get(ref.Name)
			var v []byte
			ok := false
			if err == nil {
				v, ok = s.Data[ref.Key]
			}
			if !ok && !optional(ref.Optional) {
				return nil, fmt.Errorf("container %s env %s: secret %s key %s not found", c.Name, e.Name, ref.Name, ref.Key)
			}
			set(e.Name, string(v))
		default:
			set(e.Name, "") // resourceFieldRef: processes have no limits here
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

func optional(b *bool) bool { return b != nil && *b }

// fieldValue is a downward-API field of the pod.
func fieldValue(pod *corev1.Pod, path, podIP string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1", nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		if key, ok := strings.CutPrefix(path, prefix+"['"); ok {
			return m[strings.TrimSuffix(key, "']")], nil
		}
	}
	return "", fmt.Errorf("unsupported downward API field %q", path)
}

// expand replaces $(VAR) with earlier variables; $$ escapes, and unknown
// references stay as written, as in Kubernetes.
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// expandArgs expands $(VAR) references in a container's command or args
// with its resolved environment (KEY=value entries), as the kubelet does:
// an init container can then write to the path an env var names, e.g.
// `ballast bootstrap --out $(GRPC_XDS_BOOTSTRAP)`.
func expandArgs(args, env []string) []string {
	if len(args) == 0 {
		return args
	}
	vars := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, vars)
	}
	return out
}
