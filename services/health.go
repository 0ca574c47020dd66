package services

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Health is a role's health and metrics listener:
//
//	GET /healthz  200 {"status":"ok",…} while NATS is connected and the role
//	              runs; 503 with the reason otherwise
//	GET /metrics  a few counters in the Prometheus text format
//
// It speaks plain HTTP: bind it to loopback or an internal network.
type Health struct {
	role, id string
	started  time.Time
	nc       atomic.Pointer[nats.Conn]
	running  atomic.Bool
	// requests counts the role's API answers by status class (1xx..5xx).
	requests [6]atomic.Uint64
}

// NewHealth makes the health state of a role.
func NewHealth(role, id string) *Health {
	return &Health{role: role, id: id, started: time.Now()}
}

// SetConn says which NATS connection the role uses.
func (h *Health) SetConn(nc *nats.Conn) { h.nc.Store(nc) }

// SetRunning says whether the role's components run.
func (h *Health) SetRunning(v bool) { h.running.Store(v) }

// Status reports whether the role is healthy, and why not.
func (h *Health) Status() (bool, string) {
	nc := h.nc.Load()
	switch {
	case nc == nil:
		return false, "not connected to NATS yet"
	case !nc.IsConnected():
		return false, "NATS connection is " + nc.Status().String()
	case !h.running.Load():
		return false, "the " + h.role + " is not running"
	}
	return true, ""
}

// CountRequests counts the answers of next by status class for /metrics.
func (h *Health) CountRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		if c := sw.status / 100; c >= 1 && c <= 5 {
			h.requests[c].Add(1)
		}
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Flush lets server-sent events through the counter.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Handler serves /healthz and /metrics.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := h.Status()
		body := map[string]string{"status": "ok", "role": h.role, "id": h.id}
		code := http.StatusOK
		if !ok {
			body["status"], body["reason"] = "unavailable", why
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		h.writeMetrics(w)
	})
	return mux
}

func (h *Health) writeMetrics(w http.ResponseWriter) {
	labels := fmt.Sprintf(`{role=%q,id=%q}`, h.role, h.id)
	b2i := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	ok, _ := h.Status()
	gauge := func(name, help string, v any) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n%s%s %v\n", name, help, name, name, labels, v)
	}
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s%s %d\n", name, help, name, name, labels, v)
	}
	gauge("ferry_up", "1 while the role runs and NATS is connected.", b2i(ok))
	gauge("ferry_uptime_seconds", "Seconds since the process started the role.", int64(time.Since(h.started).Seconds()))
	var st nats.Statistics
	connected := false
	if nc := h.nc.Load(); nc != nil {
		st, connected = nc.Stats(), nc.IsConnected()
	}
	gauge("ferry_nats_connected", "1 while the NATS connection is up.", b2i(connected))
	counter("ferry_nats_reconnects_total", "NATS reconnections.", st.Reconnects)
	counter("ferry_nats_in_msgs_total", "NATS messages received.", st.InMsgs)
	counter("ferry_nats_out_msgs_total", "NATS messages sent.", st.OutMsgs)
	counter("ferry_nats_in_bytes_total", "NATS payload bytes received.", st.InBytes)
	counter("ferry_nats_out_bytes_total", "NATS payload bytes sent.", st.OutBytes)
	if h.role != "agent" {
		fmt.Fprintf(w, "# HELP ferry_http_responses_total API answers by status class.\n# TYPE ferry_http_responses_total counter\n")
		for c := 1; c <= 5; c++ {
			fmt.Fprintf(w, "ferry_http_responses_total{role=%q,id=%q,code=\"%dxx\"} %d\n", h.role, h.id, c, h.requests[c].Load())
		}
	}
}

// Serve serves /healthz and /metrics on ln until ctx ends.
func (h *Health) Serve(ctx context.Context, ln net.Listener, log zerolog.Logger) error {
	srv := &http.Server{Handler: h.Handler(), ReadHeaderTimeout: 5 * time.Second}
	log.Info().Str("addr", ln.Addr().String()).Msg("health listener running")
	return serve(ctx, srv, ln, nil)
}
