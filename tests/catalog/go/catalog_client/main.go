// A Consul-0.7-shaped RPC client for the catalog tests: it dials the server port, writes the
// multiplex byte (4), opens a yamux session and, per call, a stream with a net-rpc-msgpackrpc
// codec, as Consul's connection pool does. The structs below mirror the field names and types
// of Consul 0.7's structs package (written for this test). Each result is one JSON line on
// stdout: {"step": ..., "error": ..., "reply": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	msgpackrpc "github.com/hashicorp/net-rpc-msgpackrpc"
	"github.com/hashicorp/yamux"
)

type QueryOptions struct {
	Token             string
	MinQueryIndex     uint64
	MaxQueryTime      time.Duration
	AllowStale        bool
	RequireConsistent bool
}

type QueryMeta struct {
	Index       uint64
	LastContact time.Duration
	KnownLeader bool
}

type WriteRequest struct {
	Token string
}

type RaftIndex struct {
	CreateIndex uint64
	ModifyIndex uint64
}

type NodeService struct {
	ID                string
	Service           string
	Tags              []string
	Address           string
	Port              int
	EnableTagOverride bool
	RaftIndex
}

type HealthCheck struct {
	Node        string
	CheckID     string
	Name        string
	Status      string
	Notes       string
	Output      string
	ServiceID   string
	ServiceName string
	RaftIndex
}

type RegisterRequest struct {
	Datacenter      string
	Node            string
	Address         string
	TaggedAddresses map[string]string
	Service         *NodeService
	Check           *HealthCheck
	Checks          []*HealthCheck
	WriteRequest
}

type QuerySource struct {
	Datacenter string
	Node       string
}

type DCSpecificRequest struct {
	Datacenter string
	Source     QuerySource
	QueryOptions
}

type Node struct {
	Node            string
	Address         string
	TaggedAddresses map[string]string
	RaftIndex
}

type IndexedNodes struct {
	Nodes []*Node
	QueryMeta
}

type DirEntry struct {
	LockIndex uint64
	Key       string
	Flags     uint64
	Value     []byte
	Session   string
	RaftIndex
}

type KVSRequest struct {
	Datacenter string
	Op         string
	DirEnt     DirEntry
	WriteRequest
}

type KeyRequest struct {
	Datacenter string
	Key        string
	QueryOptions
}

type IndexedDirEntries struct {
	Entries []*DirEntry
	QueryMeta
}

type result struct {
	Step  string      `json:"step"`
	Error string      `json:"error"`
	Reply interface{} `json:"reply"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: catalog_client HOST:PORT")
		os.Exit(2)
	}
	conn, err := net.DialTimeout("tcp", os.Args[1], 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte{4}); err != nil {
		fmt.Fprintln(os.Stderr, "write:", err)
		os.Exit(1)
	}
	session, err := yamux.Client(conn, yamux.DefaultConfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, "yamux:", err)
		os.Exit(1)
	}
	defer session.Close()
	out := json.NewEncoder(os.Stdout)

	call := func(step, method string, args interface{}, reply interface{}) {
		stream, err := session.Open()
		if err != nil {
			fmt.Fprintln(os.Stderr, "open stream:", err)
			os.Exit(1)
		}
		defer stream.Close()
		codec := msgpackrpc.NewClientCodec(stream)
		r := result{Step: step}
		if err := msgpackrpc.CallWithCodec(codec, method, args, reply); err != nil {
			r.Error = err.Error()
		} else {
			r.Reply = reply
		}
		out.Encode(r)
	}

	var empty struct{}
	call("ping", "Status.Ping", struct{}{}, &empty)
	call("register", "Catalog.Register", &RegisterRequest{
		Datacenter:      "dc1",
		Node:            "go-node",
		Address:         "10.1.2.3",
		TaggedAddresses: map[string]string{"wan": "198.51.100.7"},
		Service:         &NodeService{Service: "web", Tags: []string{"v1", "blue"}, Port: 8080},
		Check:           &HealthCheck{Name: "web alive", Status: "passing", ServiceID: "web"},
	}, &empty)
	call("register-bad", "Catalog.Register", &RegisterRequest{Datacenter: "dc1", Node: "x"}, &empty)
	var nodes IndexedNodes
	call("list-nodes", "Catalog.ListNodes", &DCSpecificRequest{Datacenter: "dc1"}, &nodes)

	var ok bool
	call("kv-set", "KVS.Apply", &KVSRequest{
		Datacenter: "dc1", Op: "set",
		DirEnt: DirEntry{Key: "go/key", Flags: 42, Value: []byte{0, 1, 2, 255, 'h', 'i'}},
	}, &ok)
	var got IndexedDirEntries
	call("kv-get", "KVS.Get", &KeyRequest{Datacenter: "dc1", Key: "go/key"}, &got)
	index := uint64(0)
	if len(got.Entries) == 1 {
		index = got.Entries[0].ModifyIndex
	}
	var casStale, casFresh bool
	call("kv-cas-stale", "KVS.Apply", &KVSRequest{
		Datacenter: "dc1", Op: "cas",
		DirEnt: DirEntry{Key: "go/key", Value: []byte("stale"), RaftIndex: RaftIndex{ModifyIndex: index + 1000}},
	}, &casStale)
	call("kv-cas-fresh", "KVS.Apply", &KVSRequest{
		Datacenter: "dc1", Op: "cas",
		DirEnt: DirEntry{Key: "go/key", Value: []byte("fresh"), RaftIndex: RaftIndex{ModifyIndex: index}},
	}, &casFresh)
	var after IndexedDirEntries
	call("kv-get-after", "KVS.Get", &KeyRequest{Datacenter: "dc1", Key: "go/key"}, &after)
	var missing IndexedDirEntries
	call("kv-get-missing", "KVS.Get", &KeyRequest{Datacenter: "dc1", Key: "go/none"}, &missing)
	var blocked IndexedDirEntries
	call("kv-get-blocking", "KVS.Get", &KeyRequest{
		Datacenter: "dc1", Key: "go/key",
		QueryOptions: QueryOptions{MinQueryIndex: after.Index, MaxQueryTime: 30 * time.Millisecond},
	}, &blocked)
	call("kv-bad-op", "KVS.Apply", &KVSRequest{Datacenter: "dc1", Op: "frobnicate", DirEnt: DirEntry{Key: "k"}}, &ok)
	call("unknown-method", "KVS.Frobnicate", struct{}{}, &empty)
}
