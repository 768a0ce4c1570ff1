package devcluster

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
)

// volumeSyncPeriod is how often a pod's configMap, secret, downwardAPI and
// projected volumes are rewritten from the informer caches (the kubelet's
// sync period is a minute; the dev cluster is impatient).
const volumeSyncPeriod = 2 * time.Second

// volumeSources is what volume contents come from.
type volumeSources struct {
	configMaps corev1listers.ConfigMapLister
	secrets    corev1listers.SecretLister
	tokens     tokenSource // nil: projected serviceAccountToken sources fail
}

// podVolumes are a pod's volumes on disk, each a directory under
// <pod dir>/volumes/<name> (hostPath: the host's path), which containers
// bind-mount at their mountPaths.
type podVolumes struct {
	dir string
	src volumeSources

	mu    sync.Mutex        // sync runs alone; mu guards paths for mountScript
	paths map[string]string // volume name → directory
}

func newPodVolumes(podDir string, src volumeSources) *podVolumes {
	return &podVolumes{dir: filepath.Join(podDir, "volumes"), src: src, paths: map[string]string{}}
}

// sync creates every volume that does not exist yet and rewrites the
// contents of those the kubelet keeps up to date. A volume whose source
// is missing (and not optional) is an error naming it; the others are
// still written, and an existing volume keeps its last good contents.
func (v *podVolumes) sync(pod *corev1.Pod, podIP string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	var errs []error
	for _, vol := range pod.Spec.Volumes {
		if err := v.syncOne(pod, podIP, vol); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", vol.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (v *podVolumes) syncOne(pod *corev1.Pod, podIP string, vol corev1.Volume) error {
	dir := filepath.Join(v.dir, vol.Name)
	switch {
	case vol.HostPath != nil:
		path := vol.HostPath.Path
		if t := vol.HostPath.Type; t != nil && (*t == corev1.HostPathDirectoryOrCreate) {
			if err := os.MkdirAll(path, 0o755); err != nil {
				return err
			}
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("hostPath %s: %w", path, err)
		}
		v.paths[vol.Name] = path
		return nil
	case vol.EmptyDir != nil:
		if _, ok := v.paths[vol.Name]; ok {
			return nil
		}
		// World-writable as the kubelet makes it: containers may run as
		// any user.
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			return err
		}
		v.paths[vol.Name] = dir
		return nil
	}
	files, err := v.render(pod, podIP, vol)
	if err != nil {
		return err // an existing volume keeps its last good contents
	}
	if err := writeAtomic(dir, files); err != nil {
		return err
	}
	v.paths[vol.Name] = dir
	return nil
}

// volumeFile is one file of a volume: its path inside the volume, bytes
// and mode.
type volumeFile struct {
	data []byte
	mode os.FileMode
}

// render computes the files of a configMap, secret, downwardAPI or
// projected volume.
func (v *podVolumes) render(pod *corev1.Pod, podIP string, vol corev1.Volume) (map[string]volumeFile, error) {
	files := map[string]volumeFile{}
	switch {
	case vol.ConfigMap != nil:
		s := vol.ConfigMap
		return files, v.configMapFiles(files, pod.Namespace, s.Name, s.Items, s.Optional, mode(s.DefaultMode, 0o644))
	case vol.Secret != nil:
		s := vol.Secret
		return files, v.secretFiles(files, pod.Namespace, s.SecretName, s.Items, s.Optional, mode(s.DefaultMode, 0o644))
	case vol.DownwardAPI != nil:
		s := vol.DownwardAPI
		return files, downwardFiles(files, pod, podIP, s.Items, mode(s.DefaultMode, 0o644))
	case vol.Projected != nil:
		def := mode(vol.Projected.DefaultMode, 0o644)
		for i, p := range vol.Projected.Sources {
			var err error
			switch {
			case p.ConfigMap != nil:
				err = v.configMapFiles(files, pod.Namespace, p.ConfigMap.Name, p.ConfigMap.Items, p.ConfigMap.Optional, def)
			case p.Secret != nil:
				err = v.secretFiles(files, pod.Namespace, p.Secret.Name, p.Secret.Items, p.Secret.Optional, def)
			case p.DownwardAPI != nil:
				err = downwardFiles(files, pod, podIP, p.DownwardAPI.Items, def)
			case p.ServiceAccountToken != nil:
				err = v.tokenFile(files, pod, *p.ServiceAccountToken, def)
			case p.ClusterTrustBundle != nil || p.PodCertificate != nil:
				err = fmt.Errorf("source %d: clusterTrustBundle and podCertificate are not supported by the dev cluster", i)
			}
			if err != nil {
				return nil, err
			}
		}
		return files, nil
	}
	return nil, fmt.Errorf("unsupported volume type (the dev cluster has emptyDir, hostPath, configMap, secret, downwardAPI and projected)")
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m) & 0o777
}

// keyFiles adds data's keys (or only items, at their paths) to files.
func keyFiles(files map[string]volumeFile, what string, data map[string][]byte, items []corev1.KeyToPath, def os.FileMode) error {
	if len(items) == 0 {
		for _, k := range slices.Sorted(maps.Keys(data)) {
			files[k] = volumeFile{data: data[k], mode: def}
		}
		return nil
	}
	for _, it := range items {
		d, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		files[it.Path] = volumeFile{data: d, mode: mode(it.Mode, def)}
	}
	return nil
}

func (v *podVolumes) configMapFiles(files map[string]volumeFile, ns, name string, items []corev1.KeyToPath, opt *bool, def os.FileMode) error {
	cm, err := v.src.configMaps.ConfigMaps(ns).Get(name)
	if err != nil {
		if optional(opt) {
			return nil
		}
		return fmt.Errorf("configmap %s/%s: %w", ns, name, err)
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, s := range cm.Data {
		data[k] = []byte(s)
	}
	maps.Copy(data, cm.BinaryData)
	return keyFiles(files, "configmap "+ns+"/"+name, data, items, def)
}

func (v *podVolumes) secretFiles(files map[string]volumeFile, ns, name string, items []corev1.KeyToPath, opt *bool, def os.FileMode) error {
	s, err := v.src.secrets.Secrets(ns).Get(name)
	if err != nil {
		if optional(opt) {
			return nil
		}
		return fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return keyFiles(files, "secret "+ns+"/"+name, s.Data, items, def)
}

func downwardFiles(files map[string]volumeFile, pod *corev1.Pod, podIP string, items []corev1.DownwardAPIVolumeFile, def os.FileMode) error {
	for _, it := range items {
		var val string
		switch {
		case it.FieldRef != nil:
			switch it.FieldRef.FieldPath {
			case "metadata.labels", "metadata.annotations":
				m := pod.Labels
				if it.FieldRef.FieldPath == "metadata.annotations" {
					m = pod.Annotations
				}
				var b strings.Builder
				for _, k := range slices.Sorted(maps.Keys(m)) {
					fmt.Fprintf(&b, "%s=%s\n", k, strconv.Quote(m[k]))
				}
				val = strings.TrimSuffix(b.String(), "\n")
			default:
				var err error
				if val, err = fieldValue(pod, it.FieldRef.FieldPath, podIP); err != nil {
					return fmt.Errorf("downwardAPI %s: %w", it.Path, err)
				}
			}
		case it.ResourceFieldRef != nil:
			val = "0" // processes have no limits here
		}
		files[it.Path] = volumeFile{data: []byte(val), mode: mode(it.Mode, def)}
	}
	return nil
}

// writeAtomic makes dir hold exactly files, as the kubelet's AtomicWriter
// does: the files go into a new timestamped directory, the ..data symlink
// is swapped to it by a rename (so a reader sees the old set or the new
// one, never a mix), and each top-level name is a symlink through ..data.
// Unchanged contents are left alone.
func writeAtomic(dir string, files map[string]volumeFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data := filepath.Join(dir, "..data")
	if old, err := os.Readlink(data); err == nil && sameFiles(filepath.Join(dir, old), files) {
		return nil
	}
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return err
	}
	for name, f := range files {
		if !validVolumePath(name) {
			return fmt.Errorf("path %q: must be relative, without ..", name)
		}
		p := filepath.Join(ts, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, f.mode); err != nil { // past the umask
			return err
		}
	}
	old, _ := os.Readlink(data)
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, data); err != nil {
		return err
	}
	// The user-visible names: one symlink per top-level entry; names no
	// longer in the set go.
	top := map[string]bool{}
	for name := range files {
		top[strings.SplitN(name, "/", 2)[0]] = true
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "..") && !top[e.Name()] {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	if old != "" {
		os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

// sameFiles reports whether dir holds exactly files with their modes.
func sameFiles(dir string, files map[string]volumeFile) bool {
	n := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		f, ok := files[rel]
		if !ok {
			return errors.New("extra")
		}
		info, err := d.Info()
		if err != nil || info.Mode().Perm() != f.mode {
			return errors.New("mode")
		}
		data, err := os.ReadFile(path)
		if err != nil || string(data) != string(f.data) {
			return errors.New("data")
		}
		n++
		return nil
	})
	return err == nil && n == len(files)
}

func validVolumePath(p string) bool {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "..") {
		return false
	}
	return !slices.Contains(strings.Split(p, "/"), "..")
}

// mountScript is the shell code that bind-mounts c's volumes inside its
// own mount namespace, the one `ip netns exec` makes (a slave of the
// host's, so nothing mounted here reaches the host or another container).
// A mountPath missing on the host is created there as an empty directory
// (a file for a file subPath), as the kubelet creates it in the image: it
// is never removed, since another container, of this run or another, may
// have mounted on it and removing it would detach that mount.
//
// With root tools (t non-nil), the mountPaths are in the container's root
// ($R, see rootScript) and their mount points are made there, by the
// script, on the root's writable layer.
func (v *podVolumes) mountScript(c corev1.Container, t *hostTools) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for _, m := range c.VolumeMounts {
		src, ok := v.paths[m.Name]
		if !ok {
			return "", fmt.Errorf("container %s mounts volume %q, which the pod does not have", c.Name, m.Name)
		}
		if m.SubPath != "" {
			if !validVolumePath(m.SubPath) {
				return "", fmt.Errorf("container %s volumeMount %s: subPath %q must be relative, without ..", c.Name, m.Name, m.SubPath)
			}
			// A subPath is bound as it resolves now, as the kubelet does:
			// it does not follow later updates of the volume.
			p, err := filepath.EvalSymlinks(filepath.Join(src, m.SubPath))
			if err != nil {
				// A missing subPath of an emptyDir is created.
				if err := os.MkdirAll(filepath.Join(src, m.SubPath), 0o777); err != nil {
					return "", fmt.Errorf("container %s volumeMount %s: subPath %s: %w", c.Name, m.Name, m.SubPath, err)
				}
				p = filepath.Join(src, m.SubPath)
			}
			src = p
		}
		if !filepath.IsAbs(m.MountPath) {
			return "", fmt.Errorf("container %s volumeMount %s: mountPath %q must be absolute", c.Name, m.Name, m.MountPath)
		}
		info, err := os.Stat(src)
		if err != nil {
			return "", fmt.Errorf("container %s volumeMount %s: %w", c.Name, m.Name, err)
		}
		if t != nil {
			target := `"$R"` + shellQuote(filepath.Clean(m.MountPath))
			if info.IsDir() {
				fmt.Fprintf(&b, "%s -p %s && ", t.mkdir, target)
			} else {
				fmt.Fprintf(&b, "%s -p \"$R\"%s && %s %s && ", t.mkdir, shellQuote(filepath.Dir(filepath.Clean(m.MountPath))), t.touch, target)
			}
			fmt.Fprintf(&b, "%s --bind %s %s && ", t.mount, shellQuote(src), target)
			if m.ReadOnly {
				fmt.Fprintf(&b, "%s -o remount,bind,ro %s && ", t.mount, target)
			}
			continue
		}
		if err := mountPoint(m.MountPath, info.IsDir()); err != nil {
			return "", fmt.Errorf("container %s volumeMount %s: %w", c.Name, m.Name, err)
		}
		fmt.Fprintf(&b, "mount --bind %s %s && ", shellQuote(src), shellQuote(m.MountPath))
		if m.ReadOnly {
			fmt.Fprintf(&b, "mount -o remount,bind,ro %s && ", shellQuote(m.MountPath))
		}
	}
	return b.String(), nil
}

// mountPoint makes path exist as a directory (or a file).
func mountPoint(path string, dir bool) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if dir {
		return os.MkdirAll(path, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
