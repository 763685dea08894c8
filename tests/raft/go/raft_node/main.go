// A hashicorp/raft 1.1.2 node for the interop tests: a NetworkTransport over a stream layer
// that speaks byte 1 of Consul's server port (Dial writes it, Accept reads and checks it), the
// library's in-memory log, stable and snapshot stores, and a KV state machine applying the same
// command encoding as agentrpc/raft/kv_fsm.py (a msgpack array [op, key, args...]; a snapshot is
// a msgpack map of strings).
//
// Control channel: one JSON object per line on stdin, one JSON answer per line on stdout.
//   {"op":"apply","cmd":"<base64 command>"} -> {"ok":true,"result":...,"index":N}
//   {"op":"get","key":"k"}                   -> {"ok":true,"result":"v"|null} (local FSM)
//   {"op":"dump"}                            -> {"ok":true,"result":{...}} (local FSM)
//   {"op":"state"} {"op":"leader"} {"op":"stats"}
//   {"op":"add-voter","id":"x","address":"h:p"}
//   {"op":"transfer","id":"x","address":"h:p"}
//   {"op":"bootstrap","servers":[{"id":..,"address":..}]}
// The first line written is {"ok":true,"address":"127.0.0.1:port"} once the node listens.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/codec"
	"github.com/hashicorp/raft"
)

const raftByte = 1

// ---------------------------------------------------------------------- stream layer

type byteOneLayer struct {
	net.Listener
}

func (l *byteOneLayer) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		first := make([]byte, 1)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(conn, first); err != nil || first[0] != raftByte {
			conn.Close()
			continue
		}
		conn.SetReadDeadline(time.Time{})
		return conn, nil
	}
}

func (l *byteOneLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte{raftByte}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// ---------------------------------------------------------------------- the KV machine

type kvFSM struct {
	mu   sync.Mutex
	data map[string]string
}

func handle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.RawToString = true
	return h
}

func (f *kvFSM) Apply(l *raft.Log) interface{} {
	var cmd []interface{}
	if err := codec.NewDecoderBytes(l.Data, handle()).Decode(&cmd); err != nil {
		return map[string]string{"invalid": "undecodable command"}
	}
	if len(cmd) < 2 {
		return map[string]string{"invalid": "a command is [op, key, ...]"}
	}
	op, _ := cmd[0].(string)
	key, _ := cmd[1].(string)
	args := cmd[2:]
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case op == "get" && len(args) == 0:
		if v, ok := f.data[key]; ok {
			return v
		}
		return nil
	case op == "set" && len(args) == 1:
		v, _ := args[0].(string)
		f.data[key] = v
		return nil
	case op == "cas" && len(args) == 2:
		cur, ok := f.data[key]
		if args[0] == nil {
			if ok {
				return false
			}
		} else if e, _ := args[0].(string); !ok || cur != e {
			return false
		}
		v, _ := args[1].(string)
		f.data[key] = v
		return true
	case op == "delete" && len(args) == 0:
		delete(f.data, key)
		return nil
	}
	return map[string]string{"invalid": "unknown command " + op}
}

type kvSnapshot struct{ data []byte }

func (s *kvSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *kvSnapshot) Release() {}

func (f *kvFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var buf bytes.Buffer
	if err := codec.NewEncoder(&buf, handle()).Encode(f.data); err != nil {
		return nil, err
	}
	return &kvSnapshot{buf.Bytes()}, nil
}

func (f *kvFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	raw, err := ioutil.ReadAll(rc)
	if err != nil {
		return err
	}
	data := map[string]string{}
	if err := codec.NewDecoderBytes(raw, handle()).Decode(&data); err != nil {
		return err
	}
	f.mu.Lock()
	f.data = data
	f.mu.Unlock()
	return nil
}

func (f *kvFSM) dump() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]string, len(f.data))
	for k, v := range f.data {
		out[k] = v
	}
	return out
}

// ---------------------------------------------------------------------- control

type command struct {
	Op      string `json:"op"`
	Cmd     string `json:"cmd"`
	Key     string `json:"key"`
	ID      string `json:"id"`
	Address string `json:"address"`
	Servers []struct {
		ID      string `json:"id"`
		Address string `json:"address"`
	} `json:"servers"`
}

func main() {
	id := flag.String("id", "go1", "raft server ID")
	bind := flag.String("bind", "127.0.0.1:0", "listen address")
	heartbeat := flag.Duration("heartbeat", time.Second, "HeartbeatTimeout and ElectionTimeout")
	threshold := flag.Uint64("snapshot-threshold", 8192, "SnapshotThreshold")
	trailing := flag.Uint64("trailing-logs", 10240, "TrailingLogs")
	flag.Parse()

	listener, err := net.Listen("tcp", *bind)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	transport := raft.NewNetworkTransport(&byteOneLayer{listener}, 3, 10*time.Second, os.Stderr)
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(*id)
	conf.HeartbeatTimeout = *heartbeat
	conf.ElectionTimeout = *heartbeat
	conf.LeaderLeaseTimeout = *heartbeat / 2
	conf.SnapshotThreshold = *threshold
	conf.TrailingLogs = *trailing
	conf.SnapshotInterval = time.Second
	conf.ShutdownOnRemove = false
	conf.LogOutput = os.Stderr
	fsm := &kvFSM{data: map[string]string{}}
	store := raft.NewInmemStore()
	node, err := raft.NewRaft(conf, fsm, store, store, raft.NewInmemSnapshotStore(), transport)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	out := json.NewEncoder(os.Stdout)
	out.Encode(map[string]interface{}{"ok": true, "address": listener.Addr().String()})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var c command
		answer := map[string]interface{}{"ok": true}
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			answer = map[string]interface{}{"ok": false, "error": err.Error()}
			out.Encode(answer)
			continue
		}
		var ferr error
		switch c.Op {
		case "apply":
			data, err := base64.StdEncoding.DecodeString(c.Cmd)
			if err != nil {
				ferr = err
				break
			}
			f := node.Apply(data, 10*time.Second)
			if ferr = f.Error(); ferr == nil {
				answer["result"] = f.Response()
				answer["index"] = f.Index()
			}
		case "get":
			if v, ok := fsm.dump()[c.Key]; ok {
				answer["result"] = v
			} else {
				answer["result"] = nil
			}
		case "dump":
			answer["result"] = fsm.dump()
		case "state":
			answer["result"] = node.State().String()
		case "leader":
			answer["result"] = string(node.Leader())
		case "stats":
			answer["result"] = node.Stats()
		case "add-voter":
			f := node.AddVoter(raft.ServerID(c.ID), raft.ServerAddress(c.Address), 0, 10*time.Second)
			if ferr = f.Error(); ferr == nil {
				answer["index"] = f.Index()
			}
		case "transfer":
			ferr = node.LeadershipTransferToServer(raft.ServerID(c.ID), raft.ServerAddress(c.Address)).Error()
		case "bootstrap":
			var servers []raft.Server
			for _, s := range c.Servers {
				servers = append(servers, raft.Server{ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address)})
			}
			ferr = node.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
		default:
			ferr = errors.New("unknown op " + c.Op)
		}
		if ferr != nil {
			answer = map[string]interface{}{"ok": false, "error": ferr.Error()}
		}
		out.Encode(answer)
	}
	node.Shutdown().Error()
}
