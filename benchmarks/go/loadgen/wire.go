package main

// The agent RPC framing, by hand: frames are msgpack objects back to back, a request is the
// header {Command, Seq, Token} then, for some commands, one body object; a reply is the header
// {Error, Seq} then, for some commands, one body object. Only what the generator and the
// trivial server need: encode headers, skip any object, read a header's fields.
//
// Every reader takes the whole buffer and an offset and returns the offset after the object
// together with a status: complete, short (feed more bytes and parse again from the same
// offset), or bad (not an object of the kind the protocol sends).

type status int

const (
	complete status = iota
	short
	bad
)

const (
	handshakeSeq uint64 = 1
	firstSeq     uint64 = 2
)

// replyPrefix is how every reply header without an error starts: {"Error": "", "Seq": ...}
// in the sorted key order the reference encodes; the Seq follows.
const replyPrefix = "\x82\xa5Error\xa0\xa3Seq"

func appendStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 1<<8:
		b = append(b, 0xd9, byte(n))
	case n < 1<<16:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, s...)
}

// appendUint encodes v in its smallest unsigned form, as msgpack encoders do.
func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<7:
		return append(b, byte(v))
	case v < 1<<8:
		return append(b, 0xcc, byte(v))
	case v < 1<<16:
		return append(b, 0xcd, byte(v>>8), byte(v))
	case v < 1<<32:
		return append(b, 0xce, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return append(b, 0xcf, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
		byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// appendRequest encodes one request: the bytes Python's msgpack.packb gives for
// {"Command": command, "Seq": seq, "Token": ""}, then the pre-encoded body (may be empty).
func appendRequest(b []byte, command string, seq uint64, body []byte) []byte {
	b = append(b, 0x83)
	b = appendStr(b, "Command")
	b = appendStr(b, command)
	b = appendStr(b, "Seq")
	b = appendUint(b, seq)
	b = appendStr(b, "Token")
	b = appendStr(b, "")
	return append(b, body...)
}

// appendReply encodes a reply header {Error, Seq}.
func appendReply(b []byte, seq uint64, errText string) []byte {
	if errText == "" {
		b = append(b, replyPrefix...)
		return appendUint(b, seq)
	}
	b = append(b, 0x82)
	b = appendStr(b, "Error")
	b = appendStr(b, errText)
	b = appendStr(b, "Seq")
	return appendUint(b, seq)
}

func be16(b []byte) int { return int(b[0])<<8 | int(b[1]) }

func be32(b []byte) int {
	return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
}

// objectHead reads the head of the object at b[p]: the offset after everything but its
// children (a string's bytes included), and how many child objects follow (2n for a map).
func objectHead(b []byte, p int) (next int, children int, st status) {
	if p >= len(b) {
		return p, 0, short
	}
	t := b[p]
	// need reports whether the k bytes after the type byte are there.
	need := func(k int) bool { return p+1+k <= len(b) }
	switch {
	case t <= 0x7f || t >= 0xe0: // fixints
		return p + 1, 0, complete
	case t <= 0x8f: // fixmap
		return p + 1, 2 * int(t&0x0f), complete
	case t <= 0x9f: // fixarray
		return p + 1, int(t & 0x0f), complete
	case t <= 0xbf: // fixstr
		next = p + 1 + int(t&0x1f)
	case t == 0xc0 || t == 0xc2 || t == 0xc3: // nil, false, true
		return p + 1, 0, complete
	case t == 0xc4 || t == 0xd9: // bin8, str8
		if !need(1) {
			return p, 0, short
		}
		next = p + 2 + int(b[p+1])
	case t == 0xc5 || t == 0xda: // bin16, str16
		if !need(2) {
			return p, 0, short
		}
		next = p + 3 + be16(b[p+1:])
	case t == 0xc6 || t == 0xdb: // bin32, str32
		if !need(4) {
			return p, 0, short
		}
		next = p + 5 + be32(b[p+1:])
	case t == 0xc7: // ext8
		if !need(1) {
			return p, 0, short
		}
		next = p + 3 + int(b[p+1])
	case t == 0xc8: // ext16
		if !need(2) {
			return p, 0, short
		}
		next = p + 4 + be16(b[p+1:])
	case t == 0xc9: // ext32
		if !need(4) {
			return p, 0, short
		}
		next = p + 6 + be32(b[p+1:])
	case t == 0xca: // float32
		next = p + 5
	case t == 0xcb: // float64
		next = p + 9
	case t >= 0xcc && t <= 0xcf: // uint8..uint64
		next = p + 1 + 1<<(t-0xcc)
	case t >= 0xd0 && t <= 0xd3: // int8..int64
		next = p + 1 + 1<<(t-0xd0)
	case t >= 0xd4 && t <= 0xd8: // fixext1..fixext16
		next = p + 2 + 1<<(t-0xd4)
	case t == 0xdc: // array16
		if !need(2) {
			return p, 0, short
		}
		return p + 3, be16(b[p+1:]), complete
	case t == 0xdd: // array32
		if !need(4) {
			return p, 0, short
		}
		return p + 5, be32(b[p+1:]), complete
	case t == 0xde: // map16
		if !need(2) {
			return p, 0, short
		}
		return p + 3, 2 * be16(b[p+1:]), complete
	case t == 0xdf: // map32
		if !need(4) {
			return p, 0, short
		}
		return p + 5, 2 * be32(b[p+1:]), complete
	default: // 0xc1, never used
		return p, 0, bad
	}
	if next > len(b) {
		return p, 0, short
	}
	return next, 0, complete
}

// skipObject returns the offset after the object at b[p] (nested ones included), without
// recursion: it counts the objects still owed.
func skipObject(b []byte, p int) (int, status) {
	for owed := 1; owed > 0; owed-- {
		next, children, st := objectHead(b, p)
		if st != complete {
			return p, st
		}
		p = next
		owed += children
	}
	return p, complete
}

// readString reads a str (nil counts as empty) and returns its bounds.
func readString(b []byte, p int) (start, end, next int, st status) {
	if p >= len(b) {
		return 0, 0, p, short
	}
	t := b[p]
	switch {
	case t >= 0xa0 && t <= 0xbf:
		start = p + 1
		end = start + int(t&0x1f)
	case t == 0xd9:
		if p+2 > len(b) {
			return 0, 0, p, short
		}
		start = p + 2
		end = start + int(b[p+1])
	case t == 0xda:
		if p+3 > len(b) {
			return 0, 0, p, short
		}
		start = p + 3
		end = start + be16(b[p+1:])
	case t == 0xdb:
		if p+5 > len(b) {
			return 0, 0, p, short
		}
		start = p + 5
		end = start + be32(b[p+1:])
	case t == 0xc0:
		return p + 1, p + 1, p + 1, complete
	default:
		return 0, 0, p, bad
	}
	if end > len(b) {
		return 0, 0, p, short
	}
	return start, end, end, complete
}

// readUint reads a non-negative integer in any of msgpack's integer forms.
func readUint(b []byte, p int) (v uint64, next int, st status) {
	if p >= len(b) {
		return 0, p, short
	}
	t := b[p]
	if t <= 0x7f {
		return uint64(t), p + 1, complete
	}
	var size int
	switch {
	case t >= 0xcc && t <= 0xcf:
		size = 1 << (t - 0xcc)
	case t >= 0xd0 && t <= 0xd3:
		size = 1 << (t - 0xd0)
		if p+1 < len(b) && b[p+1]&0x80 != 0 {
			return 0, p, bad // negative
		}
	default:
		return 0, p, bad
	}
	if p+1+size > len(b) {
		return 0, p, short
	}
	for _, c := range b[p+1 : p+1+size] {
		v = v<<8 | uint64(c)
	}
	return v, p + 1 + size, complete
}

// mapHead reads a map's head and returns its number of entries.
func mapHead(b []byte, p int) (entries, next int, st status) {
	if p >= len(b) {
		return 0, p, short
	}
	t := b[p]
	if t < 0x80 || (t > 0x8f && t != 0xde && t != 0xdf) {
		return 0, p, bad
	}
	next, children, st := objectHead(b, p)
	return children / 2, next, st
}

// replyHeader is one reply header: its Seq, and the bounds of its Error in the buffer.
type replyHeader struct {
	seq      uint64
	errStart int
	errEnd   int
}

// parseReplyHeader reads a reply header {Error, Seq} (keys in any order, others skipped).
func parseReplyHeader(b []byte, p int) (h replyHeader, next int, st status) {
	// The fast path: the header every successful reply has.
	if end := p + len(replyPrefix); end < len(b) && string(b[p:end]) == replyPrefix {
		seq, next, st := readUint(b, end)
		return replyHeader{seq: seq}, next, st
	}
	entries, q, st := mapHead(b, p)
	if st != complete {
		return h, p, st
	}
	haveSeq := false
	for i := 0; i < entries; i++ {
		ks, ke, after, st := readString(b, q)
		if st != complete {
			return h, p, st
		}
		switch string(b[ks:ke]) {
		case "Error":
			h.errStart, h.errEnd, q, st = readString(b, after)
		case "Seq":
			h.seq, q, st = readUint(b, after)
			haveSeq = true
		default:
			q, st = skipObject(b, after)
		}
		if st != complete {
			return h, p, st
		}
	}
	if !haveSeq {
		return h, p, bad
	}
	return h, q, complete
}

// requestHeader is one request header: its Seq and the bounds of its Command.
type requestHeader struct {
	seq      uint64
	cmdStart int
	cmdEnd   int
}

// parseRequestHeader reads a request header {Command, Seq, Token}; Command and Seq are
// required (a header without them is malformed, as the spec says).
func parseRequestHeader(b []byte, p int) (h requestHeader, next int, st status) {
	entries, q, st := mapHead(b, p)
	if st != complete {
		return h, p, st
	}
	haveSeq, haveCommand := false, false
	for i := 0; i < entries; i++ {
		ks, ke, after, st := readString(b, q)
		if st != complete {
			return h, p, st
		}
		switch string(b[ks:ke]) {
		case "Command":
			h.cmdStart, h.cmdEnd, q, st = readString(b, after)
			haveCommand = true
		case "Seq":
			h.seq, q, st = readUint(b, after)
			haveSeq = true
		default:
			q, st = skipObject(b, after)
		}
		if st != complete {
			return h, p, st
		}
	}
	if !haveSeq || !haveCommand {
		return h, p, bad
	}
	return h, q, complete
}
