// Command raft_cluster is one hashicorp/raft server of benchmarks/raft_cluster.py's Go
// cluster: Debian's raft 1.1.2 with raft-boltdb as log and stable store (behind the library's
// LogCache of 512 entries, as Consul builds it), a FileSnapshotStore keeping two snapshots, a
// TCP NetworkTransport (pool of 3, 10 s timeout, Consul's values) and a trivial state machine
// that only counts what it applies. The raft timing is DefaultConfig's (Consul's
// raft_multiplier 1). Everything it writes lives under -dir.
//
// Control channel, one JSON object per line on stdin, one answer per line on stdout (the same
// protocol as the agentrpc child of benchmarks/raft_cluster.py):
//
//	(first line, unasked)  {"ok":true,"address":"127.0.0.1:port"} once the node listens
//	{"op":"bootstrap","servers":[{"id":..,"address":..}]}
//	{"op":"wait-leader","timeout":s} -> {"ok":true,"leader":"addr","state":"Follower"}
//	{"op":"load","writers":n,"seconds":s,"warmup":s,"size":b}
//	  -> {"ok":true,"result":{"commits":..,"seconds":..,"per_second":..,"p50_us":..,...}}
//	{"op":"stats"} -> {"ok":true,"result":{raft's Stats()}}
//
// End of input shuts the node down and exits.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb"
)

const (
	logCacheSize  = 512 // Consul's raftLogCacheSize
	snapshotsKept = 2
	poolSize      = 3
	rpcTimeout    = 10 * time.Second
	applyTimeout  = 30 * time.Second
)

// countingFSM applies nothing but a counter: the benchmark measures the replication path.
type countingFSM struct {
	applied uint64
}

func (f *countingFSM) Apply(l *raft.Log) interface{} {
	atomic.AddUint64(&f.applied, 1)
	return nil
}

type countSnapshot struct{ applied uint64 }

func (s countSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := fmt.Fprintf(sink, "%d", s.applied); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s countSnapshot) Release() {}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) {
	return countSnapshot{atomic.LoadUint64(&f.applied)}, nil
}

func (f *countingFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var n uint64
	if _, err := fmt.Fscan(rc, &n); err != nil {
		return err
	}
	atomic.StoreUint64(&f.applied, n)
	return nil
}

type command struct {
	Op      string  `json:"op"`
	Timeout float64 `json:"timeout"`
	Writers int     `json:"writers"`
	Seconds float64 `json:"seconds"`
	Warmup  float64 `json:"warmup"`
	Size    int     `json:"size"`
	Servers []struct {
		ID      string `json:"id"`
		Address string `json:"address"`
	} `json:"servers"`
}

type loadResult struct {
	Writers   int     `json:"writers"`
	Commits   int     `json:"commits"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
	MaxUs     float64 `json:"max_us"`
	Errors    int     `json:"errors"`
	Error     string  `json:"error,omitempty"`
	LastIndex uint64  `json:"last_index"`
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(q*float64(len(sorted)-1))]) / float64(time.Microsecond)
}

// load runs c.Writers goroutines, each applying one c.Size-byte command at a time and waiting
// for it to be committed and applied, for c.Warmup and then the c.Seconds window; only the
// applies completed inside the window count.
func load(node *raft.Raft, c command) loadResult {
	data := make([]byte, c.Size)
	for i := range data {
		data[i] = byte(i)
	}
	var measuring, stop int32
	latencies := make([][]time.Duration, c.Writers)
	failures := make([]error, c.Writers)
	var wg sync.WaitGroup
	for w := 0; w < c.Writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for atomic.LoadInt32(&stop) == 0 {
				started := time.Now()
				if err := node.Apply(data, applyTimeout).Error(); err != nil {
					failures[w] = err
					return
				}
				if atomic.LoadInt32(&measuring) == 1 && atomic.LoadInt32(&stop) == 0 {
					latencies[w] = append(latencies[w], time.Since(started))
				}
			}
		}(w)
	}
	time.Sleep(seconds(c.Warmup))
	atomic.StoreInt32(&measuring, 1)
	windowStart := time.Now()
	time.Sleep(seconds(c.Seconds))
	atomic.StoreInt32(&stop, 1)
	window := time.Since(windowStart).Seconds()
	wg.Wait()
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out := loadResult{
		Writers: c.Writers, Commits: len(all), Seconds: window,
		PerSecond: float64(len(all)) / window,
		P50Us:     percentile(all, 0.50), P99Us: percentile(all, 0.99), MaxUs: percentile(all, 1),
		LastIndex: node.LastIndex(),
	}
	for _, err := range failures {
		if err != nil {
			out.Errors++
			out.Error = err.Error()
		}
	}
	return out
}

func waitLeader(node *raft.Raft, timeout float64) (string, error) {
	deadline := time.Now().Add(seconds(timeout))
	for time.Now().Before(deadline) {
		if leader := node.Leader(); leader != "" {
			return string(leader), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "", errors.New("no leader")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	id := flag.String("id", "n1", "raft server ID")
	bind := flag.String("bind", "127.0.0.1:0", "listen address")
	dir := flag.String("dir", "", "directory for the stores (required)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "-dir is required")
		os.Exit(2)
	}

	transport, err := raft.NewTCPTransport(*bind, nil, poolSize, rpcTimeout, os.Stderr)
	if err != nil {
		fail(err)
	}
	bolt, err := raftboltdb.NewBoltStore(filepath.Join(*dir, "raft.db"))
	if err != nil {
		fail(err)
	}
	logs, err := raft.NewLogCache(logCacheSize, bolt)
	if err != nil {
		fail(err)
	}
	snapshots, err := raft.NewFileSnapshotStore(*dir, snapshotsKept, os.Stderr)
	if err != nil {
		fail(err)
	}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(*id)
	conf.LogOutput = os.Stderr
	conf.LogLevel = "INFO"
	node, err := raft.NewRaft(conf, &countingFSM{}, logs, bolt, snapshots, transport)
	if err != nil {
		fail(err)
	}

	out := json.NewEncoder(os.Stdout)
	out.Encode(map[string]interface{}{"ok": true, "address": string(transport.LocalAddr())})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var c command
		answer := map[string]interface{}{"ok": true}
		var ferr error
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			ferr = err
		} else {
			switch c.Op {
			case "bootstrap":
				var servers []raft.Server
				for _, s := range c.Servers {
					servers = append(servers, raft.Server{
						ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address),
					})
				}
				ferr = node.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
			case "wait-leader":
				var leader string
				if leader, ferr = waitLeader(node, c.Timeout); ferr == nil {
					answer["leader"] = leader
					answer["state"] = node.State().String()
				}
			case "load":
				if node.State() != raft.Leader {
					ferr = errors.New("node is not the leader")
				} else {
					answer["result"] = load(node, c)
				}
			case "stats":
				answer["result"] = node.Stats()
			default:
				ferr = errors.New("unknown op " + c.Op)
			}
		}
		if ferr != nil {
			answer = map[string]interface{}{"ok": false, "error": ferr.Error()}
		}
		out.Encode(answer)
	}
	node.Shutdown().Error()
	bolt.Close()
}
