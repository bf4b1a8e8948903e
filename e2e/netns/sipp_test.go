//go:build e2e

package netns

import (
	"maps"
	"strings"
	"testing"
)

// A -stf file as SIPp 3.6.1 writes it (header and two dumps, the columns
// after FailedOutboundCongestion cut short).
const stfSample = "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;CallRate(P);CallRate(C);IncomingCall(P);IncomingCall(C);OutgoingCall(P);OutgoingCall(C);TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);FailedCannotSendMessage(P);FailedCannotSendMessage(C);FailedMaxUDPRetrans(P);FailedMaxUDPRetrans(C);FailedTcpConnect(P);FailedTcpConnect(C);FailedTcpClosed(P);FailedTcpClosed(C);FailedUnexpectedMessage(P);FailedUnexpectedMessage(C);FailedCallRejected(P);FailedCallRejected(C);FailedCmdNotSent(P);FailedCmdNotSent(C);FailedRegexpDoesntMatch(P);FailedRegexpDoesntMatch(C);FailedRegexpShouldntMatch(P);FailedRegexpShouldntMatch(C);FailedRegexpHdrNotFound(P);FailedRegexpHdrNotFound(C);FailedOutboundCongestion(P);FailedOutboundCongestion(C);FailedTimeoutOnRecv(P);FailedTimeoutOnRecv(C);FailedTimeoutOnSend(P);FailedTimeoutOnSend(C);Retransmissions(P);Retransmissions(C);\n" +
	"2026-11-25\t15:28:31.173468\t1795620511.173468;2026-11-25\t15:28:32.175212\t1795620512.175212;2026-11-25\t15:28:33.179615\t1795620513.179615;00:00:01;00:00:02;25;25.8964;24.9252;0;0;26;50;50;3;25;47;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;\n" +
	"2026-11-25\t15:28:31.173468\t1795620511.173468;2026-11-25\t15:28:33.281269\t1795620513.281269;2026-11-25\t15:28:33.281415\t1795620513.281415;00:00:00;00:00:02;25;0;23.7304;0;0;0;300;300;0;0;283;0;17;0;0;0;2;0;0;0;0;0;1;0;0;0;0;0;0;0;0;0;0;0;0;0;14;0;0;0;41;\n"

const screenSample = `----------------------------- Statistics Screen ------- [1-9]: Change Screen --
  Counter Name           | Periodic value            | Cumulative value
-------------------------+---------------------------+--------------------------
  Incoming calls created |        0                  |        0
  Outgoing calls created |        0                  |      200
  Total Calls created    |                           |      200
  Current Calls          |        0                  |
-------------------------+---------------------------+--------------------------
  Successful call        |        0                  |      198
  Failed call            |        0                  |        2
`

func TestParseSIPpStats(t *testing.T) {
	cases := map[string]struct {
		in      string
		want    SIPpStats
		wantErr string
	}{
		"last row wins": {in: stfSample, want: SIPpStats{Created: 300, Successful: 283, Failed: 17,
			Reasons: map[string]int{"MaxUDPRetrans": 2, "UnexpectedMessage": 1, "TimeoutOnRecv": 14}, Retransmissions: 41}},
		"header only":    {in: strings.SplitAfter(stfSample, "\n")[0], wantErr: "no data row"},
		"empty":          {in: "", wantErr: "no data row"},
		"missing column": {in: "TotalCallCreated;SuccessfulCall(C)\n5;5\n", wantErr: `no column "FailedCall(C)"`},
		"not a number":   {in: "TotalCallCreated;SuccessfulCall(C);FailedCall(C)\n5;x;0\n", wantErr: "SuccessfulCall(C)"},
		"crlf": {in: "TotalCallCreated;SuccessfulCall(C);FailedCall(C)\r\n5;5;0\r\n",
			want: SIPpStats{Created: 5, Successful: 5}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := ParseSIPpStats(strings.NewReader(c.in))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Created != c.want.Created || got.Successful != c.want.Successful || got.Failed != c.want.Failed ||
				got.Retransmissions != c.want.Retransmissions || !maps.Equal(got.Reasons, c.want.Reasons) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestParseSIPpScreen(t *testing.T) {
	cases := map[string]struct {
		in      string
		want    SIPpStats
		wantErr bool
	}{
		"counters":    {in: screenSample, want: SIPpStats{Created: 200, Successful: 198, Failed: 2}},
		"twice, last": {in: screenSample + strings.ReplaceAll(screenSample, "198", "199"), want: SIPpStats{Created: 200, Successful: 199, Failed: 2}},
		"no counters": {in: "Resolving remote host '127.0.0.1'... Done.\n", wantErr: true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := ParseSIPpScreen(strings.NewReader(c.in))
			if c.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Created != c.want.Created || got.Successful != c.want.Successful || got.Failed != c.want.Failed {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}
