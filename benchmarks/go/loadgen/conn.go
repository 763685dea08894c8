package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// One client connection on a raw file descriptor. The hot path uses raw system calls: a
// blocking read or epoll_wait through syscall.Syscall hands the Go scheduler's only P to
// sysmon after 20 us, which then wakes every 20 us for as long as the run lasts, on whatever
// CPU the generator shares (the server's, in the same-CPU cells). The generator has a single
// goroutine, so nothing needs the P while it waits in the kernel.

// maxFrame bounds the read buffer: a reply larger than this is an error, not a reason to
// grow without limit.
const maxFrame = 64 << 20

// ioTimeout bounds every blocking read and write (SO_RCVTIMEO, SO_SNDTIMEO).
const ioTimeout = 10 * time.Second

var handshakeBody = []byte("\x81\xa7Version\x01") // {"Version": 1}

func rawRead(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), e
}

func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), e
}

func rawEpollWait(ep int, events []syscall.EpollEvent, msec int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(ep),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	return int(r), e
}

// dial opens a blocking TCP connection with Nagle off and bounded blocking calls.
func dial(addr string) (int, error) {
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return -1, err
	}
	var sa syscall.Sockaddr
	family := syscall.AF_INET
	if ip4 := tcp.IP.To4(); ip4 != nil {
		sa4 := &syscall.SockaddrInet4{Port: tcp.Port}
		copy(sa4.Addr[:], ip4)
		sa = sa4
	} else {
		sa6 := &syscall.SockaddrInet6{Port: tcp.Port}
		copy(sa6.Addr[:], tcp.IP.To16())
		sa = sa6
		family = syscall.AF_INET6
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	err = syscall.Connect(fd, sa)
	for tries := 0; errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EALREADY); tries++ {
		if tries > 1000 {
			break
		}
		time.Sleep(time.Millisecond) // an interrupted connect goes on in the kernel
		err = syscall.Connect(fd, sa)
	}
	if errors.Is(err, syscall.EISCONN) {
		err = nil
	}
	if err == nil {
		err = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}
	if err == nil {
		tv := syscall.NsecToTimeval(int64(ioTimeout))
		err = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		if err == nil {
			err = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
		}
	}
	if err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", addr, err)
	}
	return fd, nil
}

// conn is one connection's reading state: received bytes not yet parsed, and the checks
// every reply goes through (its Error, and its Seq against the order requests were sent).
type conn struct {
	fd          int
	in          []byte
	have        int
	replyBody   bool
	bodyPending bool
	replies     int // replies complete (a reply with a body counts once the body is in)
	sent        int // request bytes written
	limit       int // requests this connection may send
	writing     bool
	done        bool
	errors      int
	firstError  string
	outOfOrder  int
}

func newConn(fd int, replyBody bool, readSize int) *conn {
	return &conn{fd: fd, in: make([]byte, readSize), replyBody: replyBody}
}

// errWouldBlock is a read with nothing to read: on a non-blocking descriptor, wait for epoll;
// on a blocking one, SO_RCVTIMEO ran out.
var errWouldBlock = errors.New("no reply within the I/O timeout")

// readOnce reads what is there (one call) and parses it; returns how many replies completed.
func (c *conn) readOnce() (int, error) {
	if c.have == len(c.in) {
		if len(c.in) >= maxFrame {
			return 0, fmt.Errorf("a reply larger than %d bytes", maxFrame)
		}
		grown := make([]byte, 2*len(c.in))
		copy(grown, c.in[:c.have])
		c.in = grown
	}
	n, e := rawRead(c.fd, c.in[c.have:])
	for e == syscall.EINTR {
		n, e = rawRead(c.fd, c.in[c.have:])
	}
	if e == syscall.EAGAIN {
		return 0, errWouldBlock
	}
	if e != 0 {
		return 0, fmt.Errorf("read: %w", e)
	}
	if n == 0 {
		return 0, errors.New("the server closed the connection")
	}
	c.have += n
	return c.parse()
}

// parse consumes every complete reply in the buffer and keeps the incomplete tail.
func (c *conn) parse() (int, error) {
	b := c.in[:c.have]
	p, got := 0, 0
	for {
		if c.bodyPending {
			next, st := skipObject(b, p)
			if st == short {
				break
			}
			if st == bad {
				return got, fmt.Errorf("a reply body that is not msgpack at reply %d", c.replies+got+1)
			}
			p = next
			c.bodyPending = false
			got++
			continue
		}
		h, next, st := parseReplyHeader(b, p)
		if st == short {
			break
		}
		if st == bad {
			return got, fmt.Errorf("a reply header that is not {Error, Seq} at reply %d", c.replies+got+1)
		}
		p = next
		if h.errEnd > h.errStart {
			c.errors++
			if c.firstError == "" {
				c.firstError = string(b[h.errStart:h.errEnd])
			}
		}
		if h.seq != firstSeq+uint64(c.replies+got) {
			c.outOfOrder++
		}
		if c.replyBody {
			c.bodyPending = true
			continue
		}
		got++
	}
	c.have = copy(c.in, b[p:])
	return got, nil
}

// writeAll writes all of b on a blocking descriptor.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, e := rawWrite(fd, b)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("write: %w", e)
		}
		b = b[n:]
	}
	return nil
}

// handshake sends handshake (Seq 1, Version 1) on a blocking connection and checks the reply.
func (c *conn) handshake() error {
	if err := writeAll(c.fd, appendRequest(nil, "handshake", handshakeSeq, handshakeBody)); err != nil {
		return err
	}
	for {
		h, next, st := parseReplyHeader(c.in[:c.have], 0)
		switch st {
		case complete:
			if h.errEnd > h.errStart {
				return fmt.Errorf("handshake refused: %s", c.in[h.errStart:h.errEnd])
			}
			if h.seq != handshakeSeq {
				return fmt.Errorf("handshake answered with Seq %d", h.seq)
			}
			c.have = copy(c.in, c.in[next:c.have])
			return nil
		case bad:
			return errors.New("the handshake reply is not {Error, Seq}")
		}
		n, e := rawRead(c.fd, c.in[c.have:])
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("handshake: read: %w", e)
		}
		if n == 0 {
			return errors.New("the server closed the connection during the handshake")
		}
		c.have += n
	}
}

// waitReplies blocks (a blocking descriptor) until the connection has `want` replies.
func (c *conn) waitReplies(want int) error {
	for c.replies < want {
		got, err := c.readOnce()
		if err != nil {
			return err
		}
		c.replies += got
	}
	return nil
}

// connect dials and handshakes one connection.
func connect(addr string, replyBody bool, readSize int) (*conn, error) {
	fd, err := dial(addr)
	if err != nil {
		return nil, err
	}
	c := newConn(fd, replyBody, readSize)
	if err := c.handshake(); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return c, nil
}
