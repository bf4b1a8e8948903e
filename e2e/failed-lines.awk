# Reads `go test -v` output and prints, for each test that failed, the
# last lines its _test.go files logged (t.Log, t.Error, t.Fatal; first
# line of each message, clipped), so a failure's reason is findable after
# pages of dumped logs. Used by e2e/run-netns.sh.
function flush(name,   i, n, from, more) {
  n = count[name]
  from = n > keep ? n - keep + 1 : 1
  more = (n > keep) ? ", the last " keep : ""
  printf "--- %s (%d lines of its own%s):\n", name, n, more
  for (i = from; i <= n; i++) print "  " buf[name, i]
}
BEGIN { keep = 25; clip = 400 }
/^=== (RUN|CONT|NAME|PAUSE) / { cur = $3; next }
/^ *--- FAIL: / {
  name = $3
  if (!(name in failed)) { failed[name] = 1; order[++nfailed] = name }
  next
}
/^ +[A-Za-z0-9_.-]+_test\.go:[0-9]+: / {
  if (cur == "") next
  line = $0
  sub(/^ +/, "", line)
  if (length(line) > clip) line = substr(line, 1, clip) " ..."
  buf[cur, ++count[cur]] = line
}
END {
  if (nfailed == 0) { print "(no test reported --- FAIL: the run failed outside the tests; see above)"; exit }
  for (i = 1; i <= nfailed; i++) flush(order[i])
}
