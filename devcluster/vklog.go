package devcluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
)

// vkLogger routes virtual-kubelet's logs to slog at debug: it reports the
// update conflicts it retries as errors. The provider logs its own failures.
type vkLogger struct{ l *slog.Logger }

var _ vklog.Logger = vkLogger{}

func (v vkLogger) Debug(a ...any)                         { v.l.Debug(fmt.Sprint(a...)) }
func (v vkLogger) Debugf(f string, a ...any)              { v.l.Debug(fmt.Sprintf(f, a...)) }
func (v vkLogger) Info(a ...any)                          { v.l.Debug(fmt.Sprint(a...)) }
func (v vkLogger) Infof(f string, a ...any)               { v.l.Debug(fmt.Sprintf(f, a...)) }
func (v vkLogger) Warn(a ...any)                          { v.l.Debug(fmt.Sprint(a...)) }
func (v vkLogger) Warnf(f string, a ...any)               { v.l.Debug(fmt.Sprintf(f, a...)) }
func (v vkLogger) Error(a ...any)                         { v.l.Debug(fmt.Sprint(a...)) }
func (v vkLogger) Errorf(f string, a ...any)              { v.l.Debug(fmt.Sprintf(f, a...)) }
func (v vkLogger) Fatal(a ...any)                         { v.l.Error(fmt.Sprint(a...)) }
func (v vkLogger) Fatalf(f string, a ...any)              { v.l.Error(fmt.Sprintf(f, a...)) }
func (v vkLogger) WithField(k string, a any) vklog.Logger { return vkLogger{v.l.With(k, a)} }
func (v vkLogger) WithError(err error) vklog.Logger {
	msg, _, _ := strings.Cut(fmt.Sprint(err), "\n") // drop pkg/errors stack traces
	return vkLogger{v.l.With("err", msg)}
}
func (v vkLogger) WithFields(f vklog.Fields) vklog.Logger {
	l := v.l
	for k, a := range f {
		l = l.With(k, a)
	}
	return vkLogger{l}
}

// withVKLogger puts l where virtual-kubelet looks for its logger.
func withVKLogger(ctx context.Context, l *slog.Logger) context.Context {
	return vklog.WithLogger(ctx, vkLogger{l})
}
