package bench

import (
	"cmp"
	"context"
	"errors"
	"time"
)

// controlPlaneConfig sizes scenarios 4 and 5, which share one API server
// and the control-plane processes: each run starts each control plane in
// turn (never two at once), measures scale at a size, then, at the first
// size, convergence on the same process, and stops it.
type controlPlaneConfig struct {
	ControlPlanes []controlPlane
	Scale         scaleConfig
	Convergence   convergenceConfig
}

// preparedAPI is the API server of scenarios 4 and 5, started and loaded
// with the first size's Services in the background.
type preparedAPI struct {
	done   chan struct{}
	api    *apiServer
	err    error
	loaded scaleSize
	taken  bool
}

// prepareAPI starts the API server and loads the first size of c into
// it, in the background.
func (b *Bench) prepareAPI(ctx context.Context, c scaleConfig) *preparedAPI {
	p := &preparedAPI{done: make(chan struct{})}
	if len(c.Sizes) > 0 {
		p.loaded = c.Sizes[0]
	}
	go func() {
		defer close(p.done)
		b.progress("control planes: starting kube-apiserver and etcd (in the background)")
		p.api, p.err = startAPIServer(b.dir)
		if p.err != nil {
			return
		}
		began := time.Now()
		if p.err = p.api.loadServices(ctx, p.loaded.Services, p.loaded.Endpoints); p.err != nil {
			return
		}
		b.progress("control planes: %d Services × %d endpoints in the API server (%s)", p.loaded.Services, p.loaded.Endpoints, time.Since(began).Round(time.Millisecond))
	}()
	return p
}

// wait waits until the API server is ready or has failed; a nil p is
// ready at once.
func (p *preparedAPI) wait() {
	if p != nil {
		<-p.done
	}
}

// discard stops the API server unless controlPlanes took it.
func (p *preparedAPI) discard() {
	p.wait()
	if !p.taken && p.api != nil {
		p.api.stop()
	}
}

// controlPlanes runs scenario 4 (when convergence is set) and scenario 5
// (when scale is set) and returns their sections; a section not asked for
// is nil. It uses an API server prepared ahead, or starts one here when
// prepared is nil.
func (b *Bench) controlPlanes(ctx context.Context, c controlPlaneConfig, convergence, scale bool, prepared *preparedAPI) (conv, sc *Section) {
	conv, sc = convergenceSection(c.Convergence), scaleSection(c.Scale)
	sizes := c.Scale.Sizes
	switch {
	case len(sizes) == 0:
		sizes = []scaleSize{{}} // convergence on an otherwise empty API server
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

	var (
		api    *apiServer
		err    error
		loaded scaleSize // already in the API server
	)
	if prepared != nil {
		prepared.wait()
		api, err, loaded = prepared.api, prepared.err, prepared.loaded
		prepared.taken = true
	} else {
		b.progress("control planes: starting kube-apiserver and etcd")
		api, err = startAPIServer(b.dir)
	}
	if err != nil {
		if api != nil {
			api.stop()
		}
		fail("failed: " + err.Error())
		return
	}
	defer func() {
		if err := api.stop(); err != nil {
			b.progress("control planes: stop kube-apiserver: %v", err)
		}
	}()
	var pods []*pod
	if convergence {
		pods, err = startPods(ctx, b.opts.Greeter, []podSpec{{Name: "pod-a"}, {Name: "pod-b"}, {Name: "pod-new"}})
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
	rowsOf := func(cp controlPlane) []*row {
		rows := []*row{conv.row(cp.Name())}
		for _, size := range c.Scale.Sizes {
			rows = append(rows, sc.row(scaleRow(cp, size)))
		}
		return rows
	}
	note := func(r *row, why string) {
		if r.Note == "" {
			r.Note, r.Values = why, nil
		}
	}
	st := &scaleState{}
	for si, size := range sizes {
		if si > 0 || size != loaded {
			began := time.Now()
			if err := api.loadServices(ctx, size.Services, size.Endpoints); err != nil {
				fail("failed: " + err.Error())
				return
			}
			b.progress("control planes: %d Services × %d endpoints in the API server (%s)", size.Services, size.Endpoints, time.Since(began).Round(time.Millisecond))
		}
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
					if _, ok := errors.AsType[*unavailable](err); ok {
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
