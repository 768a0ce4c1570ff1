package connset

import (
	"errors"
	"io"
	"net"
	"testing"
)

func TestCloseAllClosesTrackedAndLater(t *testing.T) {
	s := New()
	tracked, trackedPeer := net.Pipe()
	defer trackedPeer.Close()
	removed, removedPeer := net.Pipe()
	defer removedPeer.Close()
	if !s.Add(tracked) || !s.Add(removed) {
		t.Fatal("Add before CloseAll refused a connection")
	}
	s.Remove(removed)
	if _, err := removed.Write([]byte{0}); !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("Remove left the connection open: write = %v", err)
	}
	s.CloseAll()
	if _, err := tracked.Write([]byte{0}); err == nil {
		t.Error("CloseAll left a tracked connection open")
	}
	late, latePeer := net.Pipe()
	defer latePeer.Close()
	if s.Add(late) {
		t.Error("Add after CloseAll accepted a connection")
	}
	if _, err := late.Write([]byte{0}); err == nil {
		t.Error("Add after CloseAll left the connection open")
	}
}
