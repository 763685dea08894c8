// Reference encodings of hashicorp/raft 1.1.2's RPC structs, for the Python codec's tests.
//
// Every case is encoded exactly as raft's NetworkTransport encodes it: a fresh
// codec.MsgpackHandle{} (go-msgpack 0.5.5, all defaults). Requests are prefixed with their type
// byte as sendRPC writes it; responses are the error string followed by the struct, as
// handleCommand writes them. The program prints one JSON object: case name -> hex bytes.
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"

	"github.com/hashicorp/go-msgpack/codec"
	"github.com/hashicorp/raft"
)

const (
	rpcAppendEntries uint8 = iota
	rpcRequestVote
	rpcInstallSnapshot
	rpcTimeoutNow
)

func encodeBytes(values ...interface{}) []byte {
	var buf bytes.Buffer
	enc := codec.NewEncoder(&buf, &codec.MsgpackHandle{})
	for _, v := range values {
		if err := enc.Encode(v); err != nil {
			panic(err)
		}
	}
	return buf.Bytes()
}

func encode(values ...interface{}) string {
	return hex.EncodeToString(encodeBytes(values...))
}

func request(rpcType uint8, v interface{}) string {
	return hex.EncodeToString([]byte{rpcType}) + encode(v)
}

func main() {
	header := raft.RPCHeader{ProtocolVersion: 3}
	leader := []byte("127.0.0.1:8300")
	long := bytes.Repeat([]byte("x"), 40)
	configuration := raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: "5f1c2e3a-0000-4000-8000-000000000001", Address: "127.0.0.1:8300"},
		{Suffrage: raft.Nonvoter, ID: "n2", Address: "127.0.0.1:8301"},
		{Suffrage: raft.Staging, ID: "n3", Address: "127.0.0.1:8302"},
	}}
	out := map[string]string{
		"append_heartbeat": request(rpcAppendEntries, &raft.AppendEntriesRequest{
			RPCHeader: header, Term: 5, Leader: leader,
		}),
		"append_entries": request(rpcAppendEntries, &raft.AppendEntriesRequest{
			RPCHeader: header, Term: 7, Leader: leader, PrevLogEntry: 41, PrevLogTerm: 6,
			Entries: []*raft.Log{
				{Index: 42, Term: 7, Type: raft.LogCommand, Data: []byte("hello")},
				{Index: 43, Term: 7, Type: raft.LogNoop},
				{Index: 44, Term: 7, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(configuration)},
				{Index: 45, Term: 7, Type: raft.LogBarrier, Data: long, Extensions: []byte("ext")},
			},
			LeaderCommitIndex: 40,
		}),
		"append_commit_only": request(rpcAppendEntries, &raft.AppendEntriesRequest{
			RPCHeader: header, Term: 7, Leader: leader, PrevLogEntry: 45, PrevLogTerm: 7,
			Entries: []*raft.Log{}, LeaderCommitIndex: 45,
		}),
		"append_big_numbers": request(rpcAppendEntries, &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: 2}, Term: 1 << 40, Leader: leader,
			PrevLogEntry: 200, PrevLogTerm: 65535, LeaderCommitIndex: 18446744073709551615,
			Entries: []*raft.Log{{Index: 70000, Term: 1 << 33, Type: raft.LogCommand, Data: bytes.Repeat([]byte("y"), 70000)}},
		}),
		"append_response": encode("", &raft.AppendEntriesResponse{
			RPCHeader: header, Term: 7, LastLog: 43, Success: true,
		}),
		"append_response_reject": encode("", &raft.AppendEntriesResponse{
			RPCHeader: header, Term: 8, LastLog: 12, NoRetryBackoff: true,
		}),
		"unsupported_response": encode("operation not supported with current protocol version", nil),
		"vote_request": request(rpcRequestVote, &raft.RequestVoteRequest{
			RPCHeader: header, Term: 9, Candidate: []byte("127.0.0.1:8301"), LastLogIndex: 100,
			LastLogTerm: 8, LeadershipTransfer: true,
		}),
		"vote_response": encode("", &raft.RequestVoteResponse{
			RPCHeader: raft.RPCHeader{ProtocolVersion: 2}, Term: 9, Granted: true,
		}),
		"vote_response_peers": encode("", &raft.RequestVoteResponse{
			RPCHeader: raft.RPCHeader{ProtocolVersion: 1}, Term: 3,
			Peers: encodeBytes([][]byte{[]byte("127.0.0.1:8300"), []byte("127.0.0.1:8301")}),
		}),
		"snapshot_request": request(rpcInstallSnapshot, &raft.InstallSnapshotRequest{
			RPCHeader: header, SnapshotVersion: 1, Term: 4, Leader: leader, LastLogIndex: 1000,
			LastLogTerm: 3, Configuration: raft.EncodeConfiguration(configuration),
			ConfigurationIndex: 900, Size: 123456,
		}),
		"snapshot_response":    encode("", &raft.InstallSnapshotResponse{Term: 4, Success: true}),
		"timeout_now_request":  request(rpcTimeoutNow, &raft.TimeoutNowRequest{RPCHeader: header}),
		"timeout_now_response": encode("", &raft.TimeoutNowResponse{}),
		"configuration":        hex.EncodeToString(raft.EncodeConfiguration(configuration)),
		"configuration_empty":  hex.EncodeToString(raft.EncodeConfiguration(raft.Configuration{})),
		"peers":                encode([][]byte{[]byte("127.0.0.1:8300"), []byte("127.0.0.1:8301")}),
		"error_string":         encode("leadership lost while committing log"),
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
