package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one node's; each node has its own registry (no globals), so
// several nodes can live in one test process.
type metrics struct {
	reg             *prometheus.Registry
	commitLatency   prometheus.Histogram
	applyLatency    prometheus.Histogram
	applyBatch      prometheus.Histogram
	snapshotSeconds prometheus.Gauge
	snapshotBytes   prometheus.Gauge
	forwarded       prometheus.Counter
	forwardedHTTP   prometheus.Counter
	forwardedEarly  prometheus.Counter
	provenHere      prometheus.Counter
	logStore        prometheus.Histogram
	logBatch        prometheus.Histogram
	hinted          prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flotilla_raft_commit_seconds", Help: "Time from proposing a write to its commit, seen by the proposer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flotilla_fsm_apply_seconds", Help: "Time to apply one batch of log entries (one store transaction).",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)}),
		applyBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flotilla_fsm_batch_entries", Help: "Log entries applied per store transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		snapshotSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_snapshot_seconds", Help: "Duration of the last snapshot."}),
		snapshotBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_snapshot_bytes", Help: "Size of the last snapshot."}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_forwarded_writes_total", Help: "Writes forwarded from this node to the leader."}),
		forwardedHTTP: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_forwarded_http_total", Help: "Forwarded writes sent over HTTP rather than the forwarding stream: entries over 1 MiB, or a leader too old for the stream."}),
		forwardedEarly: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_forwarded_known_committed_total", Help: "Forwarded writes this node knew committed before the leader's answer came: from its own log write (see flotilla_commits_proven_here_total) or from the commit index the leader sent it."}),
		provenHere: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_commits_proven_here_total", Help: "Writes waited for on this follower that it knew committed once it had stored them itself: it and the leader are a majority of the voters."}),
		logStore: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flotilla_raft_log_store_seconds", Help: "Time to write (and fsync) one batch of entries to the Raft log.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)}),
		logBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flotilla_raft_log_batch_entries", Help: "Entries per write to the Raft log.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		hinted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_fsm_hinted_entries_total", Help: "Entries applied ahead of Raft's commit notice, because the leader's answer to a forwarded write showed them committed."}),
	}
	reg.MustRegister(m.commitLatency, m.applyLatency, m.applyBatch, m.snapshotSeconds, m.snapshotBytes, m.forwarded, m.forwardedHTTP, m.forwardedEarly, m.provenHere, m.logStore, m.logBatch, m.hinted,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_raft_state",
			Help: "Raft state of this node: 0 follower, 1 candidate, 2 leader, 3 shutdown."},
			func() float64 { return float64(n.raftState()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_raft_applied_index", Help: "Last log index applied here."},
			func() float64 { return float64(n.fsm.Applied()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_raft_commit_index", Help: "Last log index known committed."},
			func() float64 { return float64(n.commitIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_store_file_bytes", Help: "Size of the state file (metadata and bodies)."},
			func() float64 { return float64(fileSize(n.store.Path())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_store_body_bytes", Help: "Compressed message bodies stored on this node."},
			func() float64 { return float64(n.bodyBytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_raft_log_file_bytes", Help: "Size of the Raft log file."},
			func() float64 { return float64(fileSize(n.raftLogPath())) }),
	)
	return m
}
