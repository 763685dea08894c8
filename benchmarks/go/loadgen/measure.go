package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
	"syscall"
	"time"
)

// The measurements. Each connects and handshakes first, encodes every request before the
// clock starts, then runs a warm-up and a fixed window; the rate is the replies counted
// between the end of the warm-up and the end of the window over that interval. Requests still
// in flight when the window closes are drained (answered and checked), not counted.

type job struct {
	addr         string
	command      string
	body         []byte
	replyBody    bool
	depth        int
	conns        int
	maxRequests  int
	warmup       time.Duration
	duration     time.Duration
	drainTimeout time.Duration
	serverPid    int
	readSize     int
	copies       int
}

type result map[string]any

// requests is every request of a measurement, back to back in one buffer (Seq firstSeq
// upwards); offsets[i] is where request i starts and offsets[count] the total length.
type requests struct {
	buf     []byte
	offsets []int
}

func encodeRequests(command string, body []byte, count int) requests {
	largest := len(appendRequest(nil, command, firstSeq+uint64(count), body))
	r := requests{buf: make([]byte, 0, largest*count), offsets: make([]int, 1, count+1)}
	for i := 0; i < count; i++ {
		r.buf = appendRequest(r.buf, command, firstSeq+uint64(i), body)
		r.offsets = append(r.offsets, len(r.buf))
	}
	return r
}

// window is what the two marks of a measurement saw.
type window struct {
	startAt, endAt time.Time
	startN, endN   int
	startCPU       cpuSample
	endCPU         cpuSample
}

func (w *window) fill(r result) {
	elapsed := w.endAt.Sub(w.startAt).Seconds()
	counted := w.endN - w.startN
	server := w.endCPU.server - w.startCPU.server
	self := w.endCPU.self - w.startCPU.self
	other := w.endCPU.machine - w.startCPU.machine - server - self
	r["counted"] = counted
	r["elapsed"] = elapsed
	r["rate"] = 0.0
	r["client_cores"] = 0.0
	if elapsed > 0 {
		r["rate"] = float64(counted) / elapsed
		r["client_cores"] = self / elapsed
		r["other_cores"] = maxFloat(0, other/elapsed)
	}
	if w.endCPU.server > 0 {
		r["server_cpu_s"] = server
		if elapsed > 0 {
			r["server_cores"] = server / elapsed
		}
		if counted > 0 {
			r["server_cpu_per_request_us"] = server / float64(counted) * 1e6
		}
	}
}

func maxFloat(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}

// checks adds the reply checks of every connection to the result.
func checks(r result, conns []*conn) {
	errs, outOfOrder := 0, 0
	first := ""
	for _, c := range conns {
		errs += c.errors
		outOfOrder += c.outOfOrder
		if first == "" {
			first = c.firstError
		}
	}
	r["errors"] = errs
	r["first_error"] = first
	r["out_of_order"] = outOfOrder
	r["in_order"] = outOfOrder == 0
}

func closeAll(conns []*conn) {
	for _, c := range conns {
		syscall.Close(c.fd)
	}
}

// pipelined keeps `depth` requests in flight on each of `conns` connections, in one epoll
// loop over non-blocking descriptors (level-triggered: one read per readable event, then as
// many requests written as the window allows).
func pipelined(j job) (result, error) {
	reqs := encodeRequests(j.command, j.body, j.maxRequests)
	conns := make([]*conn, 0, j.conns)
	defer func() { closeAll(conns) }()
	for i := 0; i < j.conns; i++ {
		c, err := connect(j.addr, j.replyBody, j.readSize)
		if err != nil {
			return nil, err
		}
		c.limit = j.maxRequests
		conns = append(conns, c)
	}
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(ep)
	byFd := map[int32]*conn{}
	for _, c := range conns {
		if err := syscall.SetNonblock(c.fd, true); err != nil {
			return nil, err
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(c.fd)}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
			return nil, err
		}
		byFd[int32(c.fd)] = c
	}
	remaining := len(conns)
	finish := func(c *conn) error {
		c.done = true
		remaining--
		return syscall.EpollCtl(ep, syscall.EPOLL_CTL_DEL, c.fd, nil)
	}
	// pump writes as much of the window as the socket takes, and asks for EPOLLOUT when it
	// took less.
	pump := func(c *conn) error {
		want := c.replies + j.depth
		if want > c.limit {
			want = c.limit
		}
		target := reqs.offsets[want]
		if c.sent < target {
			n, e := rawWrite(c.fd, reqs.buf[c.sent:target])
			switch {
			case e == 0:
				c.sent += n
			case e != syscall.EAGAIN && e != syscall.EINTR:
				return fmt.Errorf("write: %w", e)
			}
		}
		if stuck := c.sent < target; stuck != c.writing {
			events := uint32(syscall.EPOLLIN)
			if stuck {
				events |= syscall.EPOLLOUT
			}
			ev := syscall.EpollEvent{Events: events, Fd: int32(c.fd)}
			if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
				return err
			}
			c.writing = stuck
		}
		return nil
	}

	debug.SetGCPercent(-1) // nothing is allocated below; no collector wakes up either
	defer debug.SetGCPercent(100)
	events := make([]syscall.EpollEvent, 128)
	total := 0
	var w window
	marked, closed := false, false
	start := time.Now()
	warmEnd := start.Add(j.warmup)
	windowEnd := warmEnd.Add(j.duration)
	deadline := windowEnd.Add(j.drainTimeout)
	startCPU := sampleCPU(j.serverPid)
	if j.warmup <= 0 {
		marked = true
		w.startAt, w.startN, w.startCPU = start, 0, startCPU
	}
	for _, c := range conns {
		if err := pump(c); err != nil {
			return nil, err
		}
	}
	for remaining > 0 {
		n, e := rawEpollWait(ep, events, 50)
		if e != 0 && e != syscall.EINTR {
			return nil, fmt.Errorf("epoll_wait: %w", e)
		}
		for i := 0; i < n; i++ {
			c := byFd[events[i].Fd]
			if c == nil || c.done {
				continue
			}
			if events[i].Events&(syscall.EPOLLIN|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
				got, err := c.readOnce()
				if err != nil && !errors.Is(err, errWouldBlock) {
					return nil, err
				}
				c.replies += got
				total += got
				if c.replies >= c.limit {
					if err := finish(c); err != nil {
						return nil, err
					}
					continue
				}
			}
			if err := pump(c); err != nil {
				return nil, err
			}
		}
		now := time.Now()
		if !marked && !now.Before(warmEnd) {
			marked = true
			w.startAt, w.startN, w.startCPU = now, total, sampleCPU(j.serverPid)
		}
		if !closed && !now.Before(windowEnd) {
			closed = true
			w.endAt, w.endN, w.endCPU = now, total, sampleCPU(j.serverPid)
			// Stop issuing: finish the requests already (partly) written, then drain.
			for _, c := range conns {
				c.limit = sort.SearchInts(reqs.offsets, c.sent)
				if !c.done && c.replies >= c.limit {
					if err := finish(c); err != nil {
						return nil, err
					}
				}
			}
		}
		if now.After(deadline) {
			return nil, fmt.Errorf("requests still in flight %v after the window", j.drainTimeout)
		}
	}
	end := time.Now()
	r := result{"mode": "pipelined", "depth": j.depth, "connections": j.conns}
	// capped: every request was answered before the window closed.
	r["capped"] = !closed
	if !marked {
		// The request cap was reached within the warm-up: measure everything.
		w.startAt, w.startN, w.startCPU = start, 0, startCPU
	}
	if !closed {
		w.endAt, w.endN, w.endCPU = end, total, sampleCPU(j.serverPid)
	}
	r["replies"] = total
	r["drain_s"] = end.Sub(w.endAt).Seconds()
	w.fill(r)
	checks(r, conns)
	return r, nil
}

// sequential is a closed loop of round trips on one blocking connection: write one request,
// block in read until its reply is in; the latency of every round trip in the window is kept.
func sequential(j job) (result, error) {
	reqs := encodeRequests(j.command, j.body, j.maxRequests)
	c, err := connect(j.addr, j.replyBody, j.readSize)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(c.fd)
	latencies := make([]int64, 0, j.maxRequests)
	debug.SetGCPercent(-1)
	defer debug.SetGCPercent(100)
	start := time.Now()
	warmEnd := start.Add(j.warmup)
	windowEnd := warmEnd.Add(j.duration)
	startCPU := sampleCPU(j.serverPid)
	var w window
	marked := false
	done := 0
	for i := 0; i < j.maxRequests; i++ {
		before := time.Now()
		if !marked && !before.Before(warmEnd) {
			marked = true
			w.startAt, w.startN, w.startCPU = before, done, sampleCPU(j.serverPid)
			before = time.Now()
		}
		if err := writeAll(c.fd, reqs.buf[reqs.offsets[i]:reqs.offsets[i+1]]); err != nil {
			return nil, err
		}
		if err := c.waitReplies(i + 1); err != nil {
			return nil, err
		}
		after := time.Now()
		done++
		if marked {
			latencies = append(latencies, int64(after.Sub(before)))
		}
		if !after.Before(windowEnd) {
			break
		}
	}
	w.endAt, w.endN, w.endCPU = time.Now(), done, sampleCPU(j.serverPid)
	r := result{"mode": "sequential", "depth": 1, "connections": 1}
	r["capped"] = w.endAt.Before(windowEnd)
	if !marked { // the cap was reached within the warm-up: keep every round trip
		w.startAt, w.startN, w.startCPU = start, 0, startCPU
	}
	r["replies"] = done
	r["samples"] = len(latencies)
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	for _, pct := range []struct {
		name     string
		fraction float64
	}{{"p50_us", 0.50}, {"p90_us", 0.90}, {"p99_us", 0.99}, {"max_us", 1.0}} {
		r[pct.name] = percentile(latencies, pct.fraction) / 1e3
	}
	w.fill(r)
	checks(r, []*conn{c})
	return r, nil
}

// percentile is the nearest-rank percentile of sorted samples (0 without samples).
func percentile(sorted []int64, fraction float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(fraction*float64(len(sorted))+0.999999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return float64(sorted[rank])
}

// selfcheck is the generator's own ceiling: one real reply captured from the server, then
// `copies` of it parsed from memory through the very code that parses socket reads, fed in
// pieces of the read size (so replies straddle pieces as they do on a socket).
func selfcheck(j job) (result, error) {
	c, err := connect(j.addr, j.replyBody, j.readSize)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(c.fd)
	if err := writeAll(c.fd, appendRequest(nil, j.command, firstSeq, j.body)); err != nil {
		return nil, err
	}
	if err := c.waitReplies(1); err != nil {
		return nil, err
	}
	if c.have != 0 {
		return nil, errors.New("more than one reply came back")
	}
	// Capture the bytes of exactly that reply: ask again and keep what comes.
	raw := []byte{}
	if err := writeAll(c.fd, appendRequest(nil, j.command, firstSeq+1, j.body)); err != nil {
		return nil, err
	}
	probe := newConn(c.fd, j.replyBody, j.readSize)
	probe.replies = 1 // its Seq is firstSeq+1
	for probe.replies < 2 {
		n, e := rawRead(c.fd, probe.in[probe.have:])
		if e == syscall.EINTR {
			continue
		}
		if e != 0 || n == 0 {
			return nil, fmt.Errorf("selfcheck: read: %v", e)
		}
		raw = append(raw, probe.in[probe.have:probe.have+n]...)
		probe.have += n
		got, err := probe.parse()
		if err != nil {
			return nil, err
		}
		probe.replies += got
	}
	if len(raw) > j.readSize {
		return nil, fmt.Errorf("a %d-byte reply does not fit the %d-byte read buffer", len(raw), j.readSize)
	}
	// Seq is the same in every copy: the order check is not what is timed here.
	stream := make([]byte, 0, len(raw)*j.copies)
	for i := 0; i < j.copies; i++ {
		stream = append(stream, raw...)
	}
	parser := newConn(-1, j.replyBody, j.readSize)
	debug.SetGCPercent(-1)
	defer debug.SetGCPercent(100)
	start := time.Now()
	total := 0
	for off := 0; off < len(stream); {
		n := copy(parser.in[parser.have:], stream[off:])
		off += n
		parser.have += n
		got, err := parser.parse()
		if err != nil {
			return nil, err
		}
		total += got
	}
	elapsed := time.Since(start).Seconds()
	if total != j.copies {
		return nil, fmt.Errorf("parsed %d replies of %d", total, j.copies)
	}
	return result{
		"mode":        "selfcheck",
		"rate":        float64(j.copies) / elapsed,
		"reply_bytes": len(raw),
		"copies":      j.copies,
		"errors":      parser.errors,
		"first_error": parser.firstError,
	}, nil
}
