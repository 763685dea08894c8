// Command raft_store measures Debian's raft-boltdb (the store Consul uses for its Raft log)
// the way benchmarks/raft_store.py measures agentrpc's SQLite store: W goroutines append one
// log entry at a time (StoreLog, each a bolt transaction fsynced with fdatasync) for a fixed
// window after a warm-up, and the program prints one JSON line: appends per second and the
// latency percentiles of the appends completed in the window.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb"
)

type result struct {
	Store     string  `json:"store"`
	Writers   int     `json:"writers"`
	Appends   int     `json:"appends"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return float64(sorted[i]) / float64(time.Microsecond)
}

func main() {
	dir := flag.String("dir", "", "directory for the database (required)")
	writers := flag.Int("writers", 1, "concurrent appenders")
	seconds := flag.Float64("seconds", 2, "measurement window")
	warmup := flag.Float64("warmup", 0.3, "warm-up before the window")
	size := flag.Int("size", 256, "bytes of data per entry")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "-dir is required")
		os.Exit(2)
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(*dir, "raft.db"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer store.Close()

	data := make([]byte, *size)
	for i := range data {
		data[i] = byte(i)
	}
	var next uint64
	var measuring, stop int32
	latencies := make([][]time.Duration, *writers)
	var wg sync.WaitGroup
	var failure atomic.Value
	for w := 0; w < *writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for atomic.LoadInt32(&stop) == 0 {
				index := atomic.AddUint64(&next, 1)
				started := time.Now()
				if err := store.StoreLog(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}); err != nil {
					failure.Store(err)
					return
				}
				if atomic.LoadInt32(&measuring) == 1 && atomic.LoadInt32(&stop) == 0 {
					latencies[w] = append(latencies[w], time.Since(started))
				}
			}
		}(w)
	}
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	atomic.StoreInt32(&measuring, 1)
	windowStart := time.Now()
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	atomic.StoreInt32(&stop, 1)
	window := time.Since(windowStart).Seconds()
	wg.Wait()
	if err, ok := failure.Load().(error); ok {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out := result{
		Store: "raft-boltdb", Writers: *writers, Appends: len(all), Seconds: window,
		PerSecond: float64(len(all)) / window,
		P50Us:     percentile(all, 0.50), P99Us: percentile(all, 0.99),
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
