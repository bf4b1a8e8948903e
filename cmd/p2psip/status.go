package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

// statusTimeout bounds each admin request.
const statusTimeout = 5 * time.Second

// maxAdminBody bounds what we read of an admin answer.
const maxAdminBody = 8 << 20

// statusView and memberView are the parts of superpeer.Status and
// mesh.Member (the admin API's /v1/status and /v1/members) that the table
// shows. They are decoded from JSON rather than shared as Go types because
// the super peer asked may run another release; fields it lacks stay
// empty.
type statusView struct {
	PeerID   string           `json:"peer_id"`
	Overlay  string           `json:"overlay"`
	PeerAddr string           `json:"peer_addr"`
	Ready    bool             `json:"ready"`
	Uptime   string           `json:"uptime"`
	Records  map[string]int64 `json:"records"`
	Sessions map[string]int64 `json:"sessions"`
	Attached *int64           `json:"attached"`
	Capacity *int64           `json:"capacity"`
}

type memberView struct {
	PeerID   string `json:"peer_id"`
	PeerAddr string `json:"peer_addr"`
	Load     uint32 `json:"load"`
	Capacity uint32 `json:"capacity"`
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show a super peer and the mesh it sees, from its admin API",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", Value: "127.0.0.1:6085", EnvVars: env("admin"),
				Usage: "the super peer's admin address `HOST:PORT` (or an http:// URL)"},
			jsonFlag(),
		},
		Action: status,
	}
}

func status(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("status takes no arguments, got %q", c.Args().Slice())
	}
	base := c.String("admin")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	base = strings.TrimSuffix(base, "/")
	hc := &http.Client{Timeout: statusTimeout}
	st, err := adminGet(c.Context, hc, base+"/v1/status")
	if err != nil {
		return err
	}
	members, err := adminGet(c.Context, hc, base+"/v1/members")
	if err != nil {
		return err
	}
	if c.Bool("json") {
		// The documents pass through as the super peer wrote them, so
		// fields this binary does not know survive.
		return printJSON(c.App.Writer, map[string]json.RawMessage{"status": st, "members": members})
	}
	var s statusView
	if err := json.Unmarshal(st, &s); err != nil {
		return fmt.Errorf("decode /v1/status: %w", err)
	}
	var ms []memberView
	if err := json.Unmarshal(members, &ms); err != nil {
		return fmt.Errorf("decode /v1/members: %w", err)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PEER ID\t%s\n", s.PeerID)
	fmt.Fprintf(tw, "OVERLAY\t%s\n", s.Overlay)
	fmt.Fprintf(tw, "PEER ADDR\t%s\n", s.PeerAddr)
	fmt.Fprintf(tw, "READY\t%t\n", s.Ready)
	fmt.Fprintf(tw, "UPTIME\t%s\n", s.Uptime)
	fmt.Fprintf(tw, "RECORDS\t%s\n", counts(s.Records))
	fmt.Fprintf(tw, "SESSIONS\t%s\n", counts(s.Sessions))
	if s.Attached != nil && s.Capacity != nil {
		fmt.Fprintf(tw, "ATTACHED\t%d/%d\n", *s.Attached, *s.Capacity)
	}
	fmt.Fprintf(tw, "\nMEMBERS (%d)\n", len(ms))
	fmt.Fprintln(tw, "PEER ID\tPEER ADDR\tLOAD/CAPACITY")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\n", m.PeerID, m.PeerAddr, m.Load, m.Capacity)
	}
	return tw.Flush()
}

// counts renders a map of counters as "a=1 b=2", sorted, or "none".
func counts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// adminGet fetches one JSON document; anything but 200 is an error.
func adminGet(ctx context.Context, hc *http.Client, url string) (json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminBody))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if !json.Valid(body) {
		return nil, fmt.Errorf("GET %s: answer is not JSON", url)
	}
	return body, nil
}
