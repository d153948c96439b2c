package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keelfs/keelfs/cache"
	"github.com/keelfs/keelfs/s3backend"
)

// metrics is the one place where counters from s3backend (as an Observer),
// the cache (Stats, Usage, pending work) and the FUSE boundary meet. The
// Prometheus client is used rather than a hand-written exposition format:
// it gets histograms, escaping and the text/OpenMetrics negotiation right.
type metrics struct {
	reg *prometheus.Registry

	s3Requests *prometheus.CounterVec
	s3Latency  *prometheus.HistogramVec
	s3Retries  *prometheus.CounterVec
	s3Bytes    *prometheus.CounterVec
	fuseOps    *prometheus.CounterVec

	// Totals for `keelfs status`, which has no Prometheus client.
	requests, failures, retries atomic.Int64
	bytesUp, bytesDown          atomic.Int64
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.s3Requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keelfs_s3_requests_total",
		Help: "S3 request attempts by operation and HTTP status (0: no response).",
	}, []string{"op", "status"})
	m.s3Latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keelfs_s3_request_duration_seconds",
		Help:    "Latency of S3 request attempts by operation.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1ms .. ~60s
	}, []string{"op"})
	m.s3Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keelfs_s3_retries_total",
		Help: "S3 request attempts that failed and were retried.",
	}, []string{"op"})
	m.s3Bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keelfs_s3_bytes_total",
		Help: "Payload bytes sent to (up) and received from (down) S3.",
	}, []string{"direction"})
	m.fuseOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keelfs_fuse_ops_total",
		Help: "FUSE requests answered, by operation and result (ok or error).",
	}, []string{"op", "result"})
	m.reg.MustRegister(m.s3Requests, m.s3Latency, m.s3Retries, m.s3Bytes, m.fuseOps,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

var _ s3backend.Observer = (*metrics)(nil)

func (m *metrics) RequestDone(op string, status int, d time.Duration) {
	m.s3Requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	m.s3Latency.WithLabelValues(op).Observe(d.Seconds())
	m.requests.Add(1)
	if status == 0 || status >= 500 {
		m.failures.Add(1)
	}
}

func (m *metrics) Retry(op, key, requestID string, attempt int, err error) {
	m.s3Retries.WithLabelValues(op).Inc()
	m.retries.Add(1)
}

func (m *metrics) Transferred(up, down int64) {
	if up > 0 {
		m.s3Bytes.WithLabelValues("up").Add(float64(up))
		m.bytesUp.Add(up)
	}
	if down > 0 {
		m.s3Bytes.WithLabelValues("down").Add(float64(down))
		m.bytesDown.Add(down)
	}
}

// watchReach exports whether S3 answers and when it last did.
func (m *metrics) watchReach(r *s3backend.Reach) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keelfs_s3_reachable",
		Help: "1 while S3 answers, 0 while it does not (cached data is served and writes wait in the cache)."},
		func() float64 {
			if r.State().Reachable {
				return 1
			}
			return 0
		}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keelfs_s3_last_success_timestamp_seconds",
		Help: "When S3 last answered (Unix time)."},
		func() float64 { return float64(r.State().LastOK.UnixNano()) / 1e9 }))
}

// fuseOp is the fs.OpObserver.
func (m *metrics) fuseOp(op string, ok bool, _ time.Duration) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.fuseOps.WithLabelValues(op, result).Inc()
}

// watchCache exports the cache's own counters and gauges, read at scrape
// time so they are never stale.
func (m *metrics) watchCache(c *cache.Cache, cacheSize int64) {
	st := c.Stats()
	counter := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter("keelfs_conflicts_total", "Uploads that lost a race with another writer and were kept under a conflict name.",
		func() float64 { return float64(st.Conflicts.Load()) })
	counter("keelfs_cache_hits_total", "Blocks read from the local cache.", func() float64 { return float64(st.CacheHits.Load()) })
	counter("keelfs_cache_misses_total", "Blocks fetched from S3.", func() float64 { return float64(st.CacheMisses.Load()) })
	gauge("keelfs_cache_hit_ratio", "Cache hits over block reads since the mount started.", func() float64 {
		h, mi := st.CacheHits.Load(), st.CacheMisses.Load()
		if h+mi == 0 {
			return 0
		}
		return float64(h) / float64(h+mi)
	})
	counter("keelfs_uploads_total", "Files uploaded to S3.", func() float64 { return float64(st.UploadsDone.Load()) })
	counter("keelfs_upload_errors_total", "Upload attempts that failed and will be retried.", func() float64 { return float64(st.UploadErrors.Load()) })
	counter("keelfs_uploaded_bytes_total", "Bytes of files uploaded.", func() float64 { return float64(st.BytesUploaded.Load()) })
	counter("keelfs_streamed_parts_total", "Multipart parts sent while their file was still being written.", func() float64 { return float64(st.PartsStreamed.Load()) })
	counter("keelfs_streamed_parts_used_total", "Streamed parts that the upload of the closed file used.", func() float64 { return float64(st.PartsReused.Load()) })
	counter("keelfs_deletes_total", "Objects deleted in S3.", func() float64 { return float64(st.DeletesDone.Load()) })
	counter("keelfs_passthrough_opens_total", "Opens whose reads the kernel takes from a backing file in the cache, without keelfs (FUSE passthrough).",
		func() float64 { return float64(st.PassthroughOpens.Load()) })
	counter("keelfs_backing_files_made_total", "Backing files assembled from cached blocks for passthrough.",
		func() float64 { return float64(st.BackingsMade.Load()) })
	counter("keelfs_backing_errors_total", "Writes that could not be copied to the backing file of open passthrough readers (each logged at ERROR).",
		func() float64 { return float64(st.BackingErrors.Load()) })
	gauge("keelfs_dirty_bytes", "Bytes written locally and not yet in S3.", func() float64 {
		_, dirty := c.Usage()
		return float64(dirty)
	})
	gauge("keelfs_cache_bytes", "Bytes of blocks in the local cache, clean and dirty.", func() float64 {
		clean, dirty := c.Usage()
		return float64(clean + dirty)
	})
	gauge("keelfs_cache_size_bytes", "The cache size limit (--cache-size).", func() float64 { return float64(cacheSize) })
	gauge("keelfs_pending_files", "Files with changes waiting to be uploaded.", func() float64 {
		f, _ := c.PendingCount()
		return float64(f)
	})
	gauge("keelfs_pending_deletes", "Objects waiting to be deleted in S3.", func() float64 {
		_, d := c.PendingCount()
		return float64(d)
	})
	gauge("keelfs_oldest_pending_seconds", "Age of the oldest change not yet in S3.", func() float64 {
		return c.OldestPending().Seconds()
	})
	counter("keelfs_unrecoverable_uploads_total", "Uploads that failed for good because the local version of a partly edited file could not be completed (another writer replaced the object it came from).",
		func() float64 { return float64(st.Unrecoverable.Load()) })
	// One gauge per state of the write-back's jobs (see cache/writeback).
	jobs := prometheus.NewDesc("keelfs_upload_jobs", "Upload and delete jobs by state: pending, uploading, backing-off, waiting-for-key, conflicted, failed (not retried until the file changes, a flush or a remount).",
		[]string{"state"}, nil)
	m.reg.MustRegister(collectorFunc{desc: jobs, collect: func(ch chan<- prometheus.Metric) {
		counts := c.JobCounts()
		for _, s := range []string{"pending", "uploading", "backing-off", "waiting-for-key", "conflicted", "failed"} {
			ch <- prometheus.MustNewConstMetric(jobs, prometheus.GaugeValue, float64(counts[s]), s)
		}
	}})
}

// collectorFunc is a prometheus.Collector of one labelled metric computed
// at scrape time.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (f collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f.collect(ch) }

// health decides /healthz from what the daemon knows, without asking S3:
// it must answer at once, also (above all) while S3 does not. It fails
// while S3 is unreachable and when the oldest pending change is older
// than stuckAfter.
type health struct {
	c          *cache.Cache
	reach      *s3backend.Reach
	stuckAfter time.Duration
}

func (h *health) check(ctx context.Context) error {
	if st := h.reach.State(); !st.Reachable {
		return fmt.Errorf("S3 unreachable since %s: %v", st.DownSince.UTC().Format(time.RFC3339), st.Err)
	}
	if age := h.c.OldestPending(); age > h.stuckAfter {
		files, deletes := h.c.PendingCount()
		return fmt.Errorf("uploads stuck: oldest change waiting %s (%d files, %d deletes pending)", age.Round(time.Second), files, deletes)
	}
	return nil
}

// serveMetrics serves /metrics and /healthz on addr until the listener is
// closed. It returns once the address is bound, so a bad address fails the
// mount rather than a scrape much later.
func serveMetrics(addr string, m *metrics, h *health, log *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := h.check(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return ln, nil
}
