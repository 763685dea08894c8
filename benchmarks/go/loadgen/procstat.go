package main

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// CPU time, read from /proc (Linux) at the edges of the measured window.

// clockTicks is USER_HZ, the unit of /proc/stat; 100 on every Linux ABI Go supports.
const clockTicks = 100

// processCPU is the CPU time (seconds) of every live thread of pid, summed from
// /proc/PID/task/*/schedstat (nanoseconds on the CPU), so serf's Go threads count as well as
// a Python server's single one.
func processCPU(pid int) (float64, error) {
	base := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, err := os.ReadDir(base)
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, task := range tasks {
		data, err := os.ReadFile(base + task.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended meanwhile
		}
		field, _, _ := bytes.Cut(data, []byte(" "))
		ns, err := strconv.ParseUint(string(field), 10, 64)
		if err == nil {
			total += ns
		}
	}
	return float64(total) / 1e9, nil
}

// machineBusy is the CPU time (seconds) every CPU has spent busy so far, from /proc/stat.
func machineBusy() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	fields := bytes.Fields(line)
	var busy uint64
	for i, field := range fields {
		// user nice system idle iowait irq softirq steal: all but idle and iowait.
		if i == 0 || i == 4 || i == 5 || i > 8 {
			continue
		}
		v, _ := strconv.ParseUint(string(field), 10, 64)
		busy += v
	}
	return float64(busy) / clockTicks
}

// selfCPU is this process's user plus system time (seconds).
func selfCPU() float64 {
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) != nil {
		return 0
	}
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

// cpuSample is the three clocks at one instant.
type cpuSample struct {
	server  float64
	self    float64
	machine float64
}

func sampleCPU(serverPid int) cpuSample {
	s := cpuSample{self: selfCPU(), machine: machineBusy()}
	if serverPid > 0 {
		s.server, _ = processCPU(serverPid)
	}
	return s
}
