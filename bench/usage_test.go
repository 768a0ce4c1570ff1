package bench

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestProcCPU(t *testing.T) {
	tests := []struct {
		name     string
		line     string
		wantCPU  time.Duration
		wantPPID int
		wantErr  string
	}{
		{
			name:     "nginx worker",
			line:     "4242 (nginx) S 4241 4241 3246 0 -1 4194560 880 0 0 0 1234 566 0 0 20 0 1 0 219224 3133440 394 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0",
			wantCPU:  (1234 + 566) * 10 * time.Millisecond,
			wantPPID: 4241,
		},
		{
			name:     "command name with spaces and parentheses",
			line:     "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 9 9 20 0 1 0 0 0 0",
			wantCPU:  7 * 10 * time.Millisecond,
			wantPPID: 1,
		},
		{name: "no command name", line: "7 a R 1", wantErr: "no ')'"},
		{name: "cut short", line: "7 (a) R 1 7 7 0 -1 0 0 0 0 0 3", wantErr: "want field 15"},
		{name: "not a number", line: "7 (a) R 1 7 7 0 -1 0 0 0 0 0 x 4", wantErr: "stat field 14"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cpu, ppid, err := procCPU([]byte(tt.line + "\n"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cpu != tt.wantCPU || ppid != tt.wantPPID {
				t.Errorf("cpu %v ppid %d, want %v %d", cpu, ppid, tt.wantCPU, tt.wantPPID)
			}
		})
	}
}

func TestProcRSS(t *testing.T) {
	tests := []struct {
		name, status string
		want         int64
		wantErr      bool
	}{
		{name: "process", status: "Name:\tnginx\nVmPeak:\t   9000 kB\nVmRSS:\t    1944 kB\nThreads:\t1\n", want: 1944 * 1024},
		{name: "zombie has none", status: "Name:\tx\nState:\tZ (zombie)\n", want: 0},
		{name: "unexpected unit", status: "VmRSS:\t 12 MB\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := statusKB([]byte(tt.status), "VmRSS")
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("statusKB = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// The test process reads its own usage: it exists, holds memory, and its
// tree starts with itself.
func TestTreeUsageOfThisProcess(t *testing.T) {
	tree, err := processTree(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(tree) == 0 || tree[0] != os.Getpid() {
		t.Fatalf("tree %v does not start with this process %d", tree, os.Getpid())
	}
	u, err := treeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 {
		t.Errorf("RSS %d, want > 0", u.RSS)
	}
	if _, err := treeUsage(1 << 30); err == nil {
		t.Error("usage of a pid that cannot exist: no error")
	}
	if slices.Contains(tree, 1) && os.Getpid() != 1 {
		t.Errorf("tree of this process %v holds init", tree)
	}
}

func TestStatusKB(t *testing.T) {
	status := []byte("Name:\tballast\nVmRSS:\t   67608 kB\nRssAnon:\t   11384 kB\nRssFile:\t   56224 kB\n")
	tests := []struct {
		field   string
		want    int64
		wantErr bool
	}{
		{"VmRSS", 67608 << 10, false},
		{"RssAnon", 11384 << 10, false},
		{"VmSwap", 0, false}, // missing reads as 0
	}
	for _, tt := range tests {
		got, err := statusKB(status, tt.field)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%s: %d, %v; want %d", tt.field, got, err, tt.want)
		}
	}
	if _, err := statusKB([]byte("VmRSS:\t12 MB\n"), "VmRSS"); err == nil || !strings.Contains(err.Error(), "VmRSS") {
		t.Errorf("bad unit: error %v, want one naming VmRSS", err)
	}
}

func TestSchedWait(t *testing.T) {
	for _, tc := range []struct {
		line string
		want time.Duration
		err  bool
	}{
		{"5480000000 10680000000 118360\n", 10680 * time.Millisecond, false},
		{"12 0 3", 0, false},
		{"12", 0, true},
		{"", 0, true},
		{"12 x 3", 0, true},
	} {
		got, err := schedWait([]byte(tc.line))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("schedWait(%q) = %v, %v; want %v, error %v", tc.line, got, err, tc.want, tc.err)
		}
	}
}

// This process's threads, read from /proc, have waited some time, not
// below zero.
func TestRunQueueWait(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc here")
	}
	if w, err := runQueueWait([]int{os.Getpid()}); err != nil || w < 0 {
		t.Errorf("runQueueWait(this process) = %v, %v; want a wait not below 0", w, err)
	}
}
