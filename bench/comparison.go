package bench

import (
	"cmp"
	"context"
	"errors"
	"time"
)

// ControlPlaneConfig sizes scenarios 4 and 5, which share one API server
// and the control-plane processes: each run starts each control plane in
// turn (never two at once), measures scale at a size, then, at the first
// size, convergence on the same process, and stops it.
type ControlPlaneConfig struct {
	ControlPlanes []ControlPlane
	Scale         ScaleConfig
	Convergence   ConvergenceConfig
}

// ControlPlanes runs scenario 4 (when convergence is set) and scenario 5
// (when scale is set) and returns their sections; a section not asked for
// is nil.
func (b *Bench) ControlPlanes(ctx context.Context, c ControlPlaneConfig, convergence, scale bool) (conv, sc *Section) {
	conv, sc = convergenceSection(c.Convergence), scaleSection(c.Scale)
	sizes := c.Scale.Sizes
	switch {
	case len(sizes) == 0:
		sizes = []ScaleSize{{}} // convergence on an otherwise empty API server
	case !scale:
		sizes = sizes[:1] // convergence runs with the first size loaded
	}
	for _, cp := range c.ControlPlanes {
		conv.row(cp.Name())
	}
	for _, size := range c.Scale.Sizes {
		for _, cp := range c.ControlPlanes {
			sc.row(scaleRow(cp, size))
		}
		sc.row(floorRow(size))
	}
	defer func() {
		if err := ctx.Err(); err != nil {
			for _, s := range []*Section{conv, sc} {
				if s.NotMeasured == "" {
					s.NotMeasured = "interrupted: " + err.Error()
				}
			}
		}
		convergenceHeadlines(conv)
		scaleHeadlines(sc, c.Scale.Sizes)
		if !convergence {
			conv = nil
		}
		if !scale {
			sc = nil
		}
	}()
	fail := func(why string) {
		conv.NotMeasured = cmp.Or(conv.NotMeasured, why)
		sc.NotMeasured = cmp.Or(sc.NotMeasured, why)
	}

	b.progress("control planes: starting kube-apiserver and etcd")
	api, err := startAPIServer(b.dir)
	if err != nil {
		fail("failed: " + err.Error())
		return
	}
	defer func() {
		if err := api.stop(); err != nil {
			b.progress("control planes: stop kube-apiserver: %v", err)
		}
	}()
	var pods []*Pod
	if convergence {
		pods, err = startPods(ctx, b.opts.Greeter, []PodSpec{{Name: "pod-a"}, {Name: "pod-b"}, {Name: "pod-new"}})
		if err == nil {
			defer stopPods(pods)
			err = api.setUpConvergence(ctx, pods)
		}
		if err != nil {
			conv.NotMeasured = "failed: " + err.Error()
		}
	}

	// rows of a control plane in both sections, for a note that applies
	// to all of them (it cannot run at all).
	rowsOf := func(cp ControlPlane) []*Row {
		rows := []*Row{conv.row(cp.Name())}
		for _, size := range c.Scale.Sizes {
			rows = append(rows, sc.row(scaleRow(cp, size)))
		}
		return rows
	}
	note := func(r *Row, why string) {
		if r.Note == "" {
			r.Note, r.Values = why, nil
		}
	}
	st := &scaleState{}
	for si, size := range sizes {
		began := time.Now()
		if err := api.loadServices(ctx, size.Services, size.Endpoints); err != nil {
			fail("failed: " + err.Error())
			return
		}
		b.progress("control planes: %d Services × %d endpoints in the API server (%s)", size.Services, size.Endpoints, time.Since(began).Round(time.Millisecond))
		for run := 1; run <= b.opts.Runs && ctx.Err() == nil; run++ {
			for _, cp := range c.ControlPlanes {
				scaleRow := sc.row(scaleRow(cp, size))
				convRow := conv.row(cp.Name())
				wantScale := scale && len(c.Scale.Sizes) > 0 && scaleRow.Note == ""
				wantConv := convergence && si == 0 && conv.NotMeasured == "" && convRow.Note == ""
				if !wantScale && !wantConv {
					continue
				}
				b.progress("control planes: run %d/%d: starting %s", run, b.opts.Runs, cp.Name())
				rc, err := cp.start(ctx, b, api)
				if err != nil {
					why := whyNot(err)
					b.progress("control planes: %s: %s", cp.Name(), why)
					if _, ok := errors.AsType[*Unavailable](err); ok {
						for _, r := range rowsOf(cp) {
							note(r, why)
						}
						continue
					}
					note(scaleRow, why)
					if si == 0 {
						note(convRow, why)
					}
					continue
				}
				if wantScale {
					if err := b.measureScale(ctx, rc, api, c.Scale, size, st, scaleRow, sc.row(floorRow(size))); err != nil && ctx.Err() == nil {
						note(scaleRow, "failed: "+err.Error())
						b.progress("control planes: scale %s: %s: %v", size, cp.Name(), err)
					}
				}
				if wantConv {
					if err := b.measureConvergence(ctx, rc, api, c.Convergence, pods, convRow); err != nil && ctx.Err() == nil {
						note(convRow, "failed: "+err.Error())
						b.progress("control planes: convergence: %s: %v", cp.Name(), err)
					}
				}
				rc.stop()
			}
		}
	}
	return
}
