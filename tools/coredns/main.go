// Command coredns is CoreDNS with the plugins the dev cluster uses (the
// kubernetes plugin answers Service names from the dev cluster's API
// server). Built by tools/build-coredns.sh into ~/.cache/ballast, never
// imported.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
)

// directives is the plugin order of this build (CoreDNS's default order,
// restricted to the plugins linked in).
var directives = []string{"bind", "errors", "log", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
