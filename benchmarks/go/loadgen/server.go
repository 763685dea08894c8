package main

import "net"

// The trivial server the generator's ceiling is shown against: a goroutine per connection
// reads up to 1 MiB, answers every complete request in it with a reply header encoded from a
// constant prefix plus the Seq, and writes the replies of one read in one write. It speaks
// just enough of the protocol to be correct for the benchmark: the handshake gate, handshake
// and stop (each with its body), in order, Seq echoed; any other command gets
// "Unsupported command" and the connection closes, as the reference does.

const serverReadSize = 1 << 20

func serve(addr string) error {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := listener.Accept()
		if err != nil {
			return err
		}
		go serveConn(c)
	}
}

// serverState is one connection's protocol state between reads.
type serverState struct {
	handshaken  bool
	bodyPending bool   // a handshake or stop header came, its body not yet
	pendingSeq  uint64 // that header's Seq
	pendingIsHS bool   // and whether it was the handshake
}

func serveConn(c net.Conn) {
	defer c.Close()
	in := make([]byte, serverReadSize)
	out := make([]byte, 0, 64<<10)
	have := 0
	var s serverState
	for {
		n, err := c.Read(in[have:])
		if n == 0 && err != nil {
			return
		}
		have += n
		b := in[:have]
		var p int
		var closing bool
		out, p, closing = s.answer(b, out[:0])
		if p < 0 { // malformed: no reply, close (as the reference does)
			return
		}
		if len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
		if closing {
			return
		}
		have = copy(in, b[p:])
		if have == len(in) {
			return // one frame larger than the buffer
		}
	}
}

// answer appends the replies to every complete request in b; returns the offset after the
// last one consumed (-1 for malformed input) and whether the connection must close.
func (s *serverState) answer(b, out []byte) ([]byte, int, bool) {
	p := 0
	for {
		if s.bodyPending {
			next, st := skipObject(b, p)
			if st == short {
				return out, p, false
			}
			if st == bad {
				return out, -1, true
			}
			p = next
			s.bodyPending = false
			switch {
			case !s.pendingIsHS:
				out = appendReply(out, s.pendingSeq, "")
			case s.handshaken:
				out = appendReply(out, s.pendingSeq, "Handshake already performed")
			default:
				s.handshaken = true
				out = appendReply(out, s.pendingSeq, "")
			}
			continue
		}
		h, next, st := parseRequestHeader(b, p)
		if st == short {
			return out, p, false
		}
		if st == bad {
			return out, -1, true
		}
		p = next
		command := string(b[h.cmdStart:h.cmdEnd])
		switch {
		case !s.handshaken && command != "handshake":
			return appendReply(out, h.seq, "Handshake required"), p, true
		case command == "handshake" || command == "stop":
			s.bodyPending, s.pendingSeq, s.pendingIsHS = true, h.seq, command == "handshake"
		default:
			return appendReply(out, h.seq, "Unsupported command"), p, true
		}
	}
}
