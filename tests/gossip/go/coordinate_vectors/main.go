// coordinate_vectors feeds a sequence of observations to serf's Vivaldi client (Debian's
// github.com/hashicorp/serf/coordinate) and prints what it makes of them, so that
// tests/gossip/test_coordinate.py can hold our client to the same numbers.
//
// Input (stdin, JSON): {"updates": [{"node", "other", "rtt_ns"}...], "payloads": [hex...]}.
// Output (stdout, JSON): per update either {"error"} or {"coord", "distance_ns", "payload"}
// (our coordinate after it, the estimated RTT to "other", and the ack payload serf would send
// for that coordinate), the client's reset count, the ack payload of a new client, and per
// input payload the coordinate serf's ping delegate decodes from it (or its error).
//
// Every float travels as the 16 hex digits of its IEEE-754 bits, so NaN, infinities and the
// last ulp survive the trip both ways.
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/go-msgpack/codec"
	"github.com/hashicorp/serf/coordinate"
)

// pingVersion is serf's PingVersion: the first byte of the ack payload.
const pingVersion = 1

type wireCoord struct {
	Vec        []string `json:"vec"`
	Error      string   `json:"error"`
	Adjustment string   `json:"adjustment"`
	Height     string   `json:"height"`
}

type update struct {
	Node  string    `json:"node"`
	Other wireCoord `json:"other"`
	RTTNs int64     `json:"rtt_ns"`
}

type input struct {
	Updates  []update `json:"updates"`
	Payloads []string `json:"payloads"`
}

type updateResult struct {
	Error      string     `json:"error,omitempty"`
	Coord      *wireCoord `json:"coord,omitempty"`
	DistanceNs int64      `json:"distance_ns"`
	Payload    string     `json:"payload,omitempty"`
}

type decodeResult struct {
	Error string     `json:"error,omitempty"`
	Coord *wireCoord `json:"coord,omitempty"`
}

type output struct {
	InitialPayload string         `json:"initial_payload"`
	Updates        []updateResult `json:"updates"`
	Resets         int            `json:"resets"`
	Decoded        []decodeResult `json:"decoded"`
}

func toFloat(text string) float64 {
	bits, err := strconv.ParseUint(text, 16, 64)
	if err != nil {
		panic(fmt.Sprintf("bad float bits %q: %v", text, err))
	}
	return math.Float64frombits(bits)
}

func fromFloat(value float64) string {
	return fmt.Sprintf("%016x", math.Float64bits(value))
}

func toCoord(w wireCoord) *coordinate.Coordinate {
	vec := make([]float64, len(w.Vec))
	for i, text := range w.Vec {
		vec[i] = toFloat(text)
	}
	return &coordinate.Coordinate{
		Vec:        vec,
		Error:      toFloat(w.Error),
		Adjustment: toFloat(w.Adjustment),
		Height:     toFloat(w.Height),
	}
}

func fromCoord(c *coordinate.Coordinate) *wireCoord {
	vec := make([]string, len(c.Vec))
	for i, value := range c.Vec {
		vec[i] = fromFloat(value)
	}
	return &wireCoord{vec, fromFloat(c.Error), fromFloat(c.Adjustment), fromFloat(c.Height)}
}

// ackPayload is what serf's pingDelegate.AckPayload sends for c.
func ackPayload(c *coordinate.Coordinate) string {
	var buf bytes.Buffer
	buf.WriteByte(pingVersion)
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(c); err != nil {
		panic(err)
	}
	return hex.EncodeToString(buf.Bytes())
}

// decodePayload is what serf's pingDelegate.NotifyPingComplete decodes from a payload.
func decodePayload(text string) decodeResult {
	payload, err := hex.DecodeString(text)
	if err != nil {
		panic(err)
	}
	if len(payload) == 0 {
		return decodeResult{Error: "empty"}
	}
	if payload[0] != pingVersion {
		return decodeResult{Error: fmt.Sprintf("Unsupported ping version: %v", payload[0])}
	}
	var coord coordinate.Coordinate
	dec := codec.NewDecoder(bytes.NewReader(payload[1:]), &codec.MsgpackHandle{})
	if err := dec.Decode(&coord); err != nil {
		return decodeResult{Error: err.Error()}
	}
	return decodeResult{Coord: fromCoord(&coord)}
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	client, err := coordinate.NewClient(coordinate.DefaultConfig())
	if err != nil {
		panic(err)
	}
	out := output{InitialPayload: ackPayload(client.GetCoordinate())}
	for _, u := range in.Updates {
		other := toCoord(u.Other)
		coord, err := client.Update(u.Node, other, time.Duration(u.RTTNs))
		if err != nil {
			out.Updates = append(out.Updates, updateResult{Error: err.Error()})
			continue
		}
		out.Updates = append(out.Updates, updateResult{
			Coord:      fromCoord(coord),
			DistanceNs: int64(client.DistanceTo(other)),
			Payload:    ackPayload(coord),
		})
	}
	out.Resets = client.Stats().Resets
	for _, text := range in.Payloads {
		out.Decoded = append(out.Decoded, decodePayload(text))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
