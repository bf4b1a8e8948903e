package gctune

import (
	"runtime/debug"
	"testing"
	"testing/fstest"
)

func TestCgroupMemoryMax(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	for _, c := range []struct {
		name  string
		fs    fstest.MapFS
		want  int64
		where string
		bad   bool
	}{
		{name: "v2 with a limit", fs: fstest.MapFS{
			"proc/self/cgroup": file("0::/system.slice/p2psip.service\n"),
			"sys/fs/cgroup/system.slice/p2psip.service/memory.max": file("1073741824\n"),
		}, want: 1 << 30, where: "/sys/fs/cgroup/system.slice/p2psip.service/memory.max"},
		{name: "v2 in a cgroup namespace", fs: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("536870912\n"),
		}, want: 512 << 20, where: "/sys/fs/cgroup/memory.max"},
		{name: "v2 without a limit", fs: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("max\n"),
		}, where: "/sys/fs/cgroup/memory.max"},
		{name: "v1 hybrid, as on this CI host", fs: fstest.MapFS{
			"proc/self/cgroup": file("9:name=systemd:/\n4:memory:/process_api/5eb4\n1:cpu:/\n0::/\n"),
			"sys/fs/cgroup/memory/process_api/5eb4/memory.limit_in_bytes": file("268435456\n"),
		}, want: 256 << 20, where: "/sys/fs/cgroup/memory/process_api/5eb4/memory.limit_in_bytes"},
		{name: "v1 unlimited", fs: fstest.MapFS{
			"proc/self/cgroup":                           file("4:cpuacct,memory:/docker/abc\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": file("9223372036854771712\n"),
		}, where: "/sys/fs/cgroup/memory/memory.limit_in_bytes"},
		{name: "no memory controller", fs: fstest.MapFS{
			"proc/self/cgroup": file("1:cpu:/\n"),
		}},
		{name: "not linux", fs: fstest.MapFS{}},
		{name: "garbage", fs: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("lots\n"),
		}, bad: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, where, err := cgroupMemoryMax(c.fs)
			if (err != nil) != c.bad {
				t.Fatalf("err %v, want error %v", err, c.bad)
			}
			if got != c.want || (!c.bad && where != c.where) {
				t.Errorf("got %d from %q, want %d from %q", got, where, c.want, c.where)
			}
		})
	}
}

// GOMEMLIMIT set: the runtime's limit stays the operator's.
func TestLimitToCgroupOperatorWins(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Setenv("GOMEMLIMIT", "123MiB")
	l, err := LimitToCgroup()
	if err != nil || l.Set != 0 || l.Why != "GOMEMLIMIT=123MiB set" {
		t.Fatalf("%+v %v", l, err)
	}
	if now := debug.SetMemoryLimit(-1); now != before {
		t.Errorf("memory limit changed from %d to %d", before, now)
	}
}
