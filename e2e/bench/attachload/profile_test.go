package attachload

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/e2e/harness"
)

func TestProfileAttachHeap(t *testing.T) {
	out := os.Getenv("ATTACH_HEAP_PROFILE")
	if out == "" {
		t.Skip("set ATTACH_HEAP_PROFILE=FILE")
	}
	o := harness.New(t)
	o.Log = zerolog.Nop()
	sp := o.Start()
	g, err := New(Config{Addr: sp.Node.PeerAddr(), Overlay: o.Name, Secret: o.Secret, Roots: o.CA.Pool(), Agents: 3000}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	st := g.Attach(context.Background())
	t.Logf("attached %d", st.Attached)
	time.Sleep(4 * time.Second)
	runtime.GC()
	runtime.GC()
	f, _ := os.Create(out)
	pprof.Lookup("heap").WriteTo(f, 0)
	f.Close()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap inuse %d KiB, stack %d KiB, goroutines %d", ms.HeapInuse>>10, ms.StackInuse>>10, runtime.NumGoroutine())
}
