package sipp

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseStats(t *testing.T) {
	b, err := os.ReadFile("testdata/stat.csv")
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStats(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if st.Created != 200 || st.Successful != 198 || st.Failed != 2 || st.Reasons["MaxUDPRetrans"] != 2 || len(st.Reasons) != 1 {
		t.Errorf("stats %v", st)
	}
	if _, err := ParseStats(strings.NewReader("StartTime;SuccessfulCall(C)\n")); err == nil {
		t.Error("a file without data row parsed")
	}
}

func TestParseRTTAndPercentile(t *testing.T) {
	rtts, err := ParseRTT(strings.NewReader("Date_ms;response_time_ms;rtd_no\n12.001;0;1\n24.001;3;1\n32.001;1;1\n44.5;1;1\n"))
	if err != nil || len(rtts) != 4 {
		t.Fatalf("%v %v", rtts, err)
	}
	if rtts[3].At != 44500*time.Microsecond || rtts[1].Time != 3*time.Millisecond {
		t.Errorf("%+v", rtts)
	}
	for p, want := range map[float64]time.Duration{50: time.Millisecond, 99: 3 * time.Millisecond, 25: 0, 100: 3 * time.Millisecond} {
		if got := Percentile(rtts, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

// TestDirectCalls: SIPp UAC straight to a SIPp UAS, the runner end to end.
func TestDirectCalls(t *testing.T) {
	Bin(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port := FreeUDPPort(t)
	uas := UAS(ctx, t, port, 20)
	uac := UAC(ctx, t, Calls{Target: "127.0.0.1:" + strconv.Itoa(port), From: "alice", To: "bob", Domain: "example.net", N: 20, Rate: 50})
	if err := uac.Wait(30 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, uac.Output())
	}
	if err := uas.Wait(30 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, uas.Output())
	}
	st, err := uac.Stats()
	if err != nil || st.Successful != 20 || st.Failed != 0 || st.Created != 20 {
		t.Fatalf("uac stats %v %v", st, err)
	}
	rtts, err := uac.ResponseTimes()
	if err != nil || len(rtts) != 20 {
		t.Fatalf("%d response times, %v", len(rtts), err)
	}
}
