package bench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/tools/metrics"
)

// client-go reports the time each request waited in the client-side rate
// limiter, and each retry (a 429 with Retry-After among them), through
// process-wide metrics: the benchmark registers its own.
var clientStats struct {
	once      sync.Once
	waited    atomic.Int64 // requests that waited ≥ throttledAfter
	waitNanos atomic.Int64
	retries   atomic.Int64
}

// throttledAfter is the limiter wait that counts a request as throttled.
const throttledAfter = time.Millisecond

type limiterLatency struct{}

func (limiterLatency) Observe(_ context.Context, _ string, _ url.URL, d time.Duration) {
	if d >= throttledAfter {
		clientStats.waited.Add(1)
		clientStats.waitNanos.Add(int64(d))
	}
}

type retries struct{}

func (retries) IncrementRetry(context.Context, string, string, string) { clientStats.retries.Add(1) }

func registerClientMetrics() {
	clientStats.once.Do(func() {
		metrics.Register(metrics.RegisterOpts{RateLimiterLatency: limiterLatency{}, RequestRetry: retries{}})
	})
}

// clientSample is a reading of clientStats.
type clientSample struct {
	waited, retries int64
	wait            time.Duration
}

func readClient() clientSample {
	return clientSample{clientStats.waited.Load(), clientStats.retries.Load(), time.Duration(clientStats.waitNanos.Load())}
}

func (s clientSample) since(before clientSample) clientSample {
	return clientSample{s.waited - before.waited, s.retries - before.retries, s.wait - before.wait}
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat CPU times (100 on
// every Linux platform Go supports).
const clockTicks = 100

// cpuSample is the CPU time of processes by pid ("self" for this one).
type cpuSample map[string]time.Duration

func readCPU(pids []int) cpuSample {
	s := cpuSample{}
	add := func(key, pid string) {
		b, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return
		}
		// Fields after the ")" of the command name: state is field 3,
		// utime 14, stime 15.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			return
		}
		f := strings.Fields(string(b)[i+1:])
		if len(f) < 13 {
			return
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		s[key] = time.Duration(u+st) * time.Second / clockTicks
	}
	add("self", "self")
	for _, p := range pids {
		add(strconv.Itoa(p), strconv.Itoa(p))
	}
	return s
}

// cpuLine says how many cores each process used between two samples.
func cpuLine(before, after cpuSample, wall time.Duration) string {
	type use struct {
		name  string
		cores float64
	}
	var us []use
	for k, a := range after {
		b, ok := before[k]
		if !ok {
			continue
		}
		name := "this process (provider, exec node, Sandbox controller)"
		if k != "self" {
			c, err := os.ReadFile("/proc/" + k + "/comm")
			if err != nil {
				continue
			}
			name = strings.TrimSpace(string(c))
		}
		if cores := float64(a-b) / float64(wall); cores >= 0.01 {
			us = append(us, use{name, cores})
		}
	}
	sort.Slice(us, func(i, j int) bool { return us[i].cores > us[j].cores })
	var out []string
	for _, u := range us {
		out = append(out, fmt.Sprintf("%s %.2f", u.name, u.cores))
	}
	return strings.Join(out, ", ")
}

// String is "N (total wait)", or "0".
func (s clientSample) String() string {
	if s.waited == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", s.waited, ms(s.wait))
}
