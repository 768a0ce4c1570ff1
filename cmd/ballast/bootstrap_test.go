package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootstrapCommand writes a bootstrap file as an init container would.
func TestBootstrapCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "etc", "bootstrap.json")
	cmd := newRootCmd()
	cmd.SetArgs([]string{"bootstrap", "--server", "ctl.example:15010", "--pod", "web-1", "--namespace", "shop", "--zone", "z", "--metadata", "app=web", "--out", out})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"server_uri": "ctl.example:15010"`, `"id": "ballast~web-1.shop"`, `"zone": "z"`, `"app": "web"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("bootstrap lacks %s:\n%s", want, data)
		}
	}
	cmd = newRootCmd()
	cmd.SetArgs([]string{"bootstrap", "--pod", "p", "--namespace", "n", "--metadata", "novalue"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), `--metadata "novalue"`) {
		t.Fatalf("err = %v, want one naming --metadata", err)
	}
}
