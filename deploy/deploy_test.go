// Package deploy holds no code: its tests parse the deployment files
// beside them (Kubernetes manifests, Prometheus configuration and rules,
// example configs, the compose file) and check the fields the deployment
// relies on, without kubectl, promtool or Docker.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// doc is one YAML document of a file.
type doc struct {
	file string
	n    int
	v    map[string]any
}

func (d doc) String() string { return fmt.Sprintf("%s#%d", d.file, d.n) }

// loadAll parses every .yaml/.yml file under the current directory
// (multi-document files included) and fails on a parse error.
func loadAll(t *testing.T) []doc {
	t.Helper()
	var docs []doc
	err := filepath.WalkDir(".", func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 0; ; i++ {
			var v map[string]any
			err := dec.Decode(&v)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: document %d: %w", path, i, err)
			}
			if v != nil {
				docs = append(docs, doc{file: path, n: i, v: v})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

// get walks v along keys (map keys, or decimal list indexes).
func get(v any, keys ...string) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			var i int
			if _, err := fmt.Sscanf(k, "%d", &i); err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func str(v any, keys ...string) string {
	s, _ := get(v, keys...).(string)
	return s
}

func list(v any, keys ...string) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

func strMap(v any, keys ...string) map[string]string {
	m, _ := get(v, keys...).(map[string]any)
	out := map[string]string{}
	for k, x := range m {
		out[k] = fmt.Sprint(x)
	}
	return out
}

// subset reports whether every entry of sel is in labels (a label
// selector matching a label set), and sel is not empty.
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestYAMLParses(t *testing.T) {
	loadAll(t)
	for _, want := range []string{
		"config/superpeer.example.yaml", "config/peer.example.yaml",
		"k8s/superpeer.yaml", "k8s/services.yaml",
		"prometheus/prometheus.yaml", "prometheus/p2psip-rules.yaml",
	} {
		if _, err := os.Stat(filepath.FromSlash(want)); err != nil {
			t.Error(err)
		}
	}
}

// k8sObjects are the documents under k8s/, each with apiVersion, kind and
// metadata.name.
func k8sObjects(t *testing.T) []doc {
	t.Helper()
	var out []doc
	for _, d := range loadAll(t) {
		if !strings.HasPrefix(d.file, "k8s"+string(filepath.Separator)) {
			continue
		}
		for _, k := range []string{"apiVersion", "kind"} {
			if str(d.v, k) == "" {
				t.Errorf("%s: no %s", d, k)
			}
		}
		if str(d.v, "metadata", "name") == "" {
			t.Errorf("%s: no metadata.name", d)
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		t.Fatal("no Kubernetes objects under k8s/")
	}
	return out
}

func byKind(docs []doc, kind string) []doc {
	var out []doc
	for _, d := range docs {
		if str(d.v, "kind") == kind {
			out = append(out, d)
		}
	}
	return out
}

func TestKubernetes(t *testing.T) {
	objs := k8sObjects(t)
	sets := byKind(objs, "StatefulSet")
	if len(sets) != 1 {
		t.Fatalf("want one StatefulSet, got %d", len(sets))
	}
	sts := sets[0]
	spec := get(sts.v, "spec")
	podLabels := strMap(spec, "template", "metadata", "labels")
	if !subset(strMap(spec, "selector", "matchLabels"), podLabels) {
		t.Errorf("%s: selector %v does not match the pod labels %v", sts, strMap(spec, "selector", "matchLabels"), podLabels)
	}

	// The headless Service the StatefulSet names.
	svcName := str(spec, "serviceName")
	var headless doc
	for _, s := range byKind(objs, "Service") {
		if str(s.v, "metadata", "name") == svcName {
			headless = s
		}
	}
	switch {
	case headless.v == nil:
		t.Errorf("StatefulSet serviceName %q: no such Service", svcName)
	case str(headless.v, "spec", "clusterIP") != "None":
		t.Errorf("%s: Service %s is not headless (clusterIP %q)", headless, svcName, str(headless.v, "spec", "clusterIP"))
	case get(headless.v, "spec", "publishNotReadyAddresses") != true:
		t.Errorf("%s: the mesh Service must publish not-ready pods, or no pod can join before it is ready", headless)
	case !subset(strMap(headless.v, "spec", "selector"), podLabels):
		t.Errorf("%s: selector does not match the super peers", headless)
	}

	pod := get(spec, "template", "spec")
	containers := list(pod, "containers")
	if len(containers) != 1 {
		t.Fatalf("%s: want one container, got %d", sts, len(containers))
	}
	c := containers[0]
	ports := map[string]int{}
	for _, p := range list(c, "ports") {
		ports[str(p, "name")], _ = get(p, "containerPort").(int)
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := str(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s: %s path %q, want %q", sts, probe, got, path)
		}
		if port := get(c, probe, "httpGet", "port"); port != "admin" && port != 6085 {
			t.Errorf("%s: %s on port %v, want the admin port", sts, probe, port)
		}
	}
	if ports["admin"] != 6085 {
		t.Errorf("%s: no admin container port 6085", sts)
	}

	// Configuration: advertise the pod IP, join through the pod DNS names
	// of the headless Service, the secret from a mounted Secret.
	env := map[string]any{}
	for _, e := range list(c, "env") {
		env[str(e, "name")] = e
	}
	if str(env["P2PSIP_ADVERTISE"], "valueFrom", "fieldRef", "fieldPath") != "status.podIP" {
		t.Errorf("%s: P2PSIP_ADVERTISE is not the pod IP from the downward API", sts)
	}
	args := strings.Join(func() []string {
		var s []string
		for _, a := range list(c, "args") {
			s = append(s, fmt.Sprint(a))
		}
		return s
	}(), " ")
	replicas, _ := get(spec, "replicas").(int)
	if replicas < 3 {
		t.Errorf("%s: %d replicas, want at least 3", sts, replicas)
	}
	for i := range replicas {
		want := fmt.Sprintf("%s-%d.%s:7946", str(sts.v, "metadata", "name"), i, svcName)
		if !regexp.MustCompile(`--join[= ]\S*` + regexp.QuoteMeta(want)).MatchString(args) {
			t.Errorf("%s: --join lacks %s (args %q)", sts, want, args)
		}
	}
	secretFile := str(env["P2PSIP_SECRET_FILE"], "value")
	mounted := false
	for _, m := range list(c, "volumeMounts") {
		for _, v := range list(pod, "volumes") {
			if str(v, "name") == str(m, "name") && str(v, "secret", "secretName") != "" &&
				strings.HasPrefix(secretFile, str(m, "mountPath")+"/") && get(m, "readOnly") == true {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("%s: P2PSIP_SECRET_FILE %q is not in a read-only mounted Secret", sts, secretFile)
	}

	// Non-root, read-only root file system.
	if get(c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Errorf("%s: root file system not read-only", sts)
	}
	if get(c, "securityContext", "runAsNonRoot") != true && get(pod, "securityContext", "runAsNonRoot") != true {
		t.Errorf("%s: runAsNonRoot not set", sts)
	}
	if get(c, "securityContext", "allowPrivilegeEscalation") != false {
		t.Errorf("%s: allowPrivilegeEscalation not false", sts)
	}
	if grace, _ := get(pod, "terminationGracePeriodSeconds").(int); grace < 30 {
		t.Errorf("%s: terminationGracePeriodSeconds %d leaves no time to drain", sts, grace)
	}

	// The disruption budget covers exactly the super peers.
	pdbs := byKind(objs, "PodDisruptionBudget")
	if len(pdbs) != 1 {
		t.Fatalf("want one PodDisruptionBudget, got %d", len(pdbs))
	}
	if got := get(pdbs[0].v, "spec", "maxUnavailable"); got != 1 {
		t.Errorf("%s: maxUnavailable %v, want 1", pdbs[0], got)
	}
	if sel := strMap(pdbs[0].v, "spec", "selector", "matchLabels"); !subset(sel, podLabels) {
		t.Errorf("%s: selector %v does not match the StatefulSet's pods %v", pdbs[0], sel, podLabels)
	}

	// Services expose SIP, TURN and the peer protocol on the super peers,
	// by container port names that exist.
	exposed := map[string]bool{}
	for _, s := range byKind(objs, "Service") {
		if !subset(strMap(s.v, "spec", "selector"), podLabels) {
			t.Errorf("%s: selector does not match the super peers", s)
		}
		for _, p := range list(s.v, "spec", "ports") {
			proto := str(p, "protocol")
			if proto == "" {
				proto = "TCP"
			}
			exposed[fmt.Sprintf("%v/%s", get(p, "port"), proto)] = true
			if tp, ok := get(p, "targetPort").(string); ok {
				if _, found := ports[tp]; !found {
					t.Errorf("%s: targetPort %q is no container port", s, tp)
				}
			}
		}
	}
	for _, want := range []string{"5060/UDP", "5060/TCP", "5061/TCP", "3478/UDP", "3478/TCP", "6084/TCP", "7946/TCP", "7946/UDP"} {
		if !exposed[want] {
			t.Errorf("no Service exposes %s", want)
		}
	}
}

// durationRE is a Prometheus duration as rules use it.
var durationRE = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)

func TestPrometheusRules(t *testing.T) {
	var groups []any
	for _, d := range loadAll(t) {
		if strings.HasPrefix(d.file, "prometheus"+string(filepath.Separator)) {
			groups = append(groups, list(d.v, "groups")...)
		}
	}
	if len(groups) == 0 {
		t.Fatal("no rule groups under prometheus/")
	}
	metrics := map[string]bool{} // metric names the alerts use
	alerts := map[string]bool{}
	groupNames := map[string]bool{}
	for _, g := range groups {
		name := str(g, "name")
		if name == "" || groupNames[name] {
			t.Errorf("rule group name %q empty or repeated", name)
		}
		groupNames[name] = true
		rules := list(g, "rules")
		if len(rules) == 0 {
			t.Errorf("group %s has no rules", name)
		}
		for i, r := range rules {
			m, _ := r.(map[string]any)
			for k := range m {
				if !slices.Contains([]string{"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, k) {
					t.Errorf("group %s rule %d: unknown field %q", name, i, k)
				}
			}
			expr := str(r, "expr")
			if err := checkExpr(expr); err != nil {
				t.Errorf("group %s rule %d: expr %q: %v", name, i, expr, err)
			}
			alert, record := str(r, "alert"), str(r, "record")
			switch {
			case (alert == "") == (record == ""):
				t.Errorf("group %s rule %d: want exactly one of alert and record", name, i)
			case record != "":
				if !regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`).MatchString(record) {
					t.Errorf("record %q: not a metric name", record)
				}
				if get(r, "for") != nil || get(r, "annotations") != nil {
					t.Errorf("record %s: recording rules take no for or annotations", record)
				}
			default:
				if alerts[alert] {
					t.Errorf("alert %s repeated", alert)
				}
				alerts[alert] = true
				if f := str(r, "for"); !durationRE.MatchString(f) {
					t.Errorf("alert %s: for %q is not a duration", alert, f)
				}
				if sev := str(r, "labels", "severity"); !slices.Contains([]string{"critical", "warning", "info"}, sev) {
					t.Errorf("alert %s: severity %q", alert, sev)
				}
				if str(r, "annotations", "summary") == "" {
					t.Errorf("alert %s: no summary annotation", alert)
				}
				for _, n := range regexp.MustCompile(`p2psip_[a-z_]+`).FindAllString(expr, -1) {
					metrics[n] = true
				}
				if strings.Contains(expr, `reason="no_quorum"`) {
					metrics[`no_quorum`] = true
				}
			}
		}
	}
	for _, want := range []string{"p2psip_store_operation_errors_total", "no_quorum", "p2psip_mesh_members",
		"p2psip_attach_refused_total", "p2psip_turn_allocations", "p2psip_sip_overload_total", "p2psip_registrar_store_failures_total"} {
		if !metrics[want] {
			t.Errorf("no alert on %s", want)
		}
	}
}

// checkExpr is a promtool-free sanity check of a PromQL expression: not
// empty, brackets balanced and nested properly outside string literals,
// range selectors with valid durations.
func checkExpr(expr string) error {
	if strings.TrimSpace(expr) == "" {
		return errors.New("empty")
	}
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	var quote rune
	for _, r := range expr {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return fmt.Errorf("unbalanced %q", r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if quote != 0 || len(stack) > 0 {
		return errors.New("unclosed bracket or string")
	}
	for _, m := range regexp.MustCompile(`\[([^\]]*)\]`).FindAllStringSubmatch(expr, -1) {
		if !durationRE.MatchString(m[1]) {
			return fmt.Errorf("range [%s] is not a duration", m[1])
		}
	}
	return nil
}

func TestPrometheusConfig(t *testing.T) {
	var found bool
	for _, d := range loadAll(t) {
		if get(d.v, "scrape_configs") == nil {
			continue
		}
		found = true
		for _, f := range list(d.v, "rule_files") {
			if _, err := os.Stat(filepath.Join(filepath.Dir(d.file), fmt.Sprint(f))); err != nil {
				t.Errorf("%s: rule file: %v", d, err)
			}
		}
		jobs := map[string]bool{}
		for i, sc := range list(d.v, "scrape_configs") {
			job := str(sc, "job_name")
			if job == "" || jobs[job] {
				t.Errorf("%s: scrape config %d: job_name %q empty or repeated", d, i, job)
			}
			jobs[job] = true
			if get(sc, "static_configs") == nil && get(sc, "kubernetes_sd_configs") == nil {
				t.Errorf("%s: job %s has no targets", d, job)
			}
			if p := str(sc, "metrics_path"); p != "" && p != "/metrics" {
				t.Errorf("%s: job %s scrapes %s, the super peer serves /metrics", d, job, p)
			}
		}
		for _, k := range []string{"scrape_interval", "evaluation_interval"} {
			if v := str(d.v, "global", k); v != "" {
				if _, err := time.ParseDuration(v); err != nil {
					t.Errorf("%s: global.%s: %v", d, k, err)
				}
			}
		}
	}
	if !found {
		t.Fatal("no Prometheus configuration (scrape_configs) under deploy/")
	}
}

// TestCompose checks compose/compose.yaml without Docker: three super peers
// meshed on the backbone (each advertising its fixed address and joining
// the others), two agents each on a LAN of its own bootstrapping at super
// peers, the image built from docker/Dockerfile, and every network,
// volume, secret and dependency it names defined.
func TestCompose(t *testing.T) {
	path := filepath.Join("compose", "compose.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	services, _ := get(c, "services").(map[string]any)
	if len(services) == 0 {
		t.Fatalf("%s: no services", path)
	}
	defined := func(section, name string) bool { return get(c, section, name) != nil || hasKey(c, section, name) }

	sps := map[string]string{} // super peer service → backbone address
	var agents []string
	builds := 0
	for name, s := range services {
		cmd := list(s, "command")
		role := ""
		if len(cmd) > 0 {
			role = fmt.Sprint(cmd[0])
		}
		if img := str(s, "image"); img == "" && get(s, "build") == nil {
			t.Errorf("service %s: no image and no build", name)
		}
		if df := str(s, "build", "dockerfile"); df != "" {
			builds++
			ctx := filepath.Join("compose", filepath.FromSlash(str(s, "build", "context")))
			if _, err := os.Stat(filepath.Join(ctx, filepath.FromSlash(df))); err != nil {
				t.Errorf("service %s: dockerfile: %v", name, err)
			}
			if df != "deploy/docker/Dockerfile" {
				t.Errorf("service %s builds %s, want deploy/docker/Dockerfile", name, df)
			}
		}
		nets := serviceNetworks(s)
		for _, n := range nets {
			if !defined("networks", n) {
				t.Errorf("service %s: network %s not defined", name, n)
			}
		}
		for _, v := range list(s, "volumes") {
			src := strings.SplitN(fmt.Sprint(v), ":", 2)[0]
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") && !defined("volumes", src) {
				t.Errorf("service %s: volume %s not defined", name, src)
			}
		}
		for _, sec := range list(s, "secrets") {
			if !defined("secrets", fmt.Sprint(sec)) {
				t.Errorf("service %s: secret %v not defined", name, sec)
			}
		}
		if deps, ok := get(s, "depends_on").(map[string]any); ok {
			for d := range deps {
				if services[d] == nil {
					t.Errorf("service %s depends on unknown service %s", name, d)
				}
			}
		}
		switch role {
		case "superpeer":
			addr := str(s, "networks", "backbone", "ipv4_address")
			if addr == "" {
				t.Errorf("super peer %s: no fixed backbone address", name)
			}
			sps[name] = addr
			if get(s, "healthcheck") == nil {
				t.Errorf("super peer %s: no healthcheck", name)
			}
			if get(s, "read_only") != true {
				t.Errorf("super peer %s: root file system not read-only", name)
			}
		case "peer":
			agents = append(agents, name)
		}
	}
	if len(sps) != 3 || len(agents) != 2 {
		t.Fatalf("want 3 super peers and 2 agents, got %v and %v", sps, agents)
	}
	if builds == 0 {
		t.Error("no service builds the image")
	}
	for name, addr := range sps {
		args := flagArgs(list(services[name], "command"))
		if args["advertise"] != addr {
			t.Errorf("super peer %s advertises %q, its address is %s", name, args["advertise"], addr)
		}
		joined := strings.Split(args["join"], ",")
		for other, a := range sps {
			if other != name && !slices.Contains(joined, a+":7946") {
				t.Errorf("super peer %s does not join %s (%s:7946): --join %q", name, other, a, args["join"])
			}
		}
	}
	// Each agent has a LAN of its own, bootstraps at super peers, and
	// starts after them.
	lans := map[string]string{}
	for _, name := range agents {
		s := services[name]
		for _, n := range serviceNetworks(s) {
			if n == "backbone" {
				continue
			}
			if other, taken := lans[n]; taken {
				t.Errorf("agents %s and %s share network %s", name, other, n)
			}
			lans[n] = name
		}
		boot := strings.Split(str(s, "environment", "P2PSIP_BOOTSTRAP"), ",")
		for _, hp := range boot {
			host := strings.TrimSuffix(hp, ":6084")
			if !slices.ContainsFunc(maps(sps), func(a string) bool { return a == host }) {
				t.Errorf("agent %s bootstraps at %s, no super peer's peer port", name, hp)
			}
		}
		for sp := range sps {
			if str(s, "depends_on", sp, "condition") != "service_healthy" {
				t.Errorf("agent %s does not wait for %s to be healthy", name, sp)
			}
		}
		for _, k := range []string{"P2PSIP_CREDENTIALS_FILE", "P2PSIP_OVERLAY", "P2PSIP_SIP_LISTEN"} {
			if str(s, "environment", k) == "" {
				t.Errorf("agent %s: %s not set", name, k)
			}
		}
	}
	if len(lans) != 2 {
		t.Errorf("agents' own networks: %v, want one each", lans)
	}
}

func hasKey(v any, section, name string) bool {
	m, _ := get(v, section).(map[string]any)
	_, ok := m[name]
	return ok
}

// serviceNetworks lists a compose service's networks (list or map form).
func serviceNetworks(s any) []string {
	var out []string
	switch n := get(s, "networks").(type) {
	case []any:
		for _, x := range n {
			out = append(out, fmt.Sprint(x))
		}
	case map[string]any:
		for k := range n {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// flagArgs maps "--name value" and "--name=value" in a command to name → value.
func flagArgs(cmd []any) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(cmd); i++ {
		a := fmt.Sprint(cmd[i])
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok && i+1 < len(cmd) {
			i++
			value = fmt.Sprint(cmd[i])
		}
		out[name] = value
	}
	return out
}

func maps(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
