// loadgen drives an agent RPC server (agentrpc, serf, Consul 0.7's agent) over TCP, for the
// engine-limit benchmark (benchmarks/engine_limit.py): a client that is never the bound.
//
//	loadgen pipelined  -addr H:P [-command stop] [-body HEX] [-reply-body] -depth N -conns C ...
//	loadgen sequential -addr H:P [-command stop] [-body HEX] [-reply-body] ...
//	loadgen selfcheck  -addr H:P [-command stop] [-body HEX] [-reply-body] [-copies N]
//	loadgen serve      -addr H:P
//
// Every connection handshakes first (Seq 1, Version 1); the measured requests follow with Seq
// 2 upwards, all encoded before the clock starts. Every reply header is decoded: its Error
// counted and its Seq checked against the order of the requests; bodies are skipped.
// pipelined keeps depth requests in flight on each of C connections in one epoll loop;
// sequential is a closed loop of blocking round trips with their latencies; selfcheck parses
// one captured reply, repeated, from memory (the parsing ceiling); serve is a trivial server
// to show the generator's ceiling against. A measurement prints one JSON line on stdout:
// {"ok": true, "rate": ..., ...} or {"ok": false, "error": "..."} (exit status 1).
//
// -body is the request body as hex-encoded msgpack; "auto" (the default) is {"Stop": 0} for
// stop and no body otherwise. -cpu-pid names the server's process: its CPU time over the
// window (all threads, /proc/PID/task/*/schedstat) is reported, per request too.
//
// Built in GOPATH mode with the standard library only (GO111MODULE=off go build).
package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"
)

var stopBody = []byte("\x81\xa4Stop\x00") // {"Stop": 0}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: loadgen pipelined|sequential|selfcheck|serve -addr HOST:PORT ..."))
	}
	mode := os.Args[1]
	flags := flag.NewFlagSet(mode, flag.ContinueOnError)
	addr := flags.String("addr", "127.0.0.1:8400", "the server's RPC address")
	command := flags.String("command", "stop", "the command measured")
	body := flags.String("body", "auto", `request body, hex-encoded msgpack ("" for none)`)
	replyBody := flags.Bool("reply-body", false, "the command's reply has a body")
	depth := flags.Int("depth", 1, "requests in flight per connection (pipelined)")
	conns := flags.Int("conns", 1, "connections (pipelined)")
	maxRequests := flags.Int("max-requests", 1_500_000, "cap of requests per connection")
	warmup := flags.Float64("warmup", 0.3, "seconds of load before the clock starts")
	duration := flags.Float64("duration", 1.5, "seconds the clock runs")
	drain := flags.Float64("drain-timeout", 30, "seconds in-flight requests may take after the window")
	cpuPid := flags.Int("cpu-pid", 0, "the server's pid, to report its CPU time over the window")
	readSize := flags.Int("read-size", 1<<20, "bytes asked for by every read")
	copies := flags.Int("copies", 1_000_000, "replies parsed from memory (selfcheck)")
	if err := flags.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	if mode == "serve" {
		fail(serve(*addr))
	}
	j := job{
		addr:         *addr,
		command:      *command,
		replyBody:    *replyBody,
		depth:        *depth,
		conns:        *conns,
		maxRequests:  *maxRequests,
		warmup:       seconds(*warmup),
		duration:     seconds(*duration),
		drainTimeout: seconds(*drain),
		serverPid:    *cpuPid,
		readSize:     *readSize,
		copies:       *copies,
	}
	switch {
	case *body == "auto" && *command == "stop":
		j.body = stopBody
	case *body != "auto":
		decoded, err := hex.DecodeString(*body)
		if err != nil {
			fail(fmt.Errorf("-body: %w", err))
		}
		j.body = decoded
	}
	if j.depth < 1 || j.conns < 1 || j.maxRequests < 1 || j.readSize < 64 || j.copies < 1 {
		fail(fmt.Errorf("-depth, -conns, -max-requests and -copies must be positive, -read-size >= 64"))
	}
	var r result
	var err error
	switch mode {
	case "pipelined":
		r, err = pipelined(j)
	case "sequential":
		r, err = sequential(j)
	case "selfcheck":
		r, err = selfcheck(j)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fail(err)
	}
	r["ok"] = true
	r["command"] = j.command
	r["client_cpu_total_s"] = selfCPU()
	emit(r)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func emit(r result) {
	line, err := json.Marshal(r)
	if err != nil {
		line = []byte(fmt.Sprintf(`{"ok": false, "error": %q}`, err.Error()))
	}
	os.Stdout.Write(append(line, '\n'))
}

func fail(err error) {
	emit(result{"ok": false, "error": err.Error()})
	os.Exit(1)
}
