package main

import (
	"context"
	"os"
	"testing"
	"time"
)

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// waitDone runs wait and reports on done when it returns.
func waitDone(wait func(context.Context) error) <-chan time.Time {
	done := make(chan time.Time, 1)
	go func() {
		wait(context.Background())
		done <- time.Now()
	}()
	return done
}

// A request that arrived before the wait (after the empty read) ends it at
// once. Go's RawRead resets the poller's readiness before its function
// runs, so a waiter that only waited for the next wake-up slept to its
// limit here: with a limit of a minute, this test then fails.
func TestPortWaiterSeesAnEarlierRequest(t *testing.T) {
	r, w := pipe(t)
	wait := portWaiter(r, time.Minute)
	if wait == nil {
		t.Fatal("a pipe is pollable, the waiter should use the poller")
	}
	w.Write([]byte("a1 ping\n"))
	select {
	case <-waitDone(wait):
	case <-time.After(20 * time.Second):
		t.Fatal("the waiter missed a request that was there before it waited")
	}
}

// With nothing to read, the wait lasts until the port is woken.
func TestPortWaiterWakesOnARequest(t *testing.T) {
	r, w := pipe(t)
	wait := portWaiter(r, time.Minute)
	done := waitDone(wait)
	select {
	case <-done:
		t.Fatal("the waiter returned with nothing to read")
	case <-time.After(100 * time.Millisecond):
	}
	w.Write([]byte("a1 ping\n"))
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the waiter was not woken by a request")
	}
}

// hasRequest: data to read is a request; nothing to read is none, and a
// hung-up port (the host end closed: a read returns EOF at once) is none
// either, or the agent would read it again and again instead of waiting.
func TestHasRequest(t *testing.T) {
	r, w := pipe(t)
	if hasRequest(r.Fd()) {
		t.Error("an empty pipe has a request")
	}
	w.Write([]byte("a1 ping\n"))
	if !hasRequest(r.Fd()) {
		t.Error("a pipe with data has no request")
	}
	r2, w2 := pipe(t)
	w2.Close()
	if hasRequest(r2.Fd()) {
		t.Error("a hung-up pipe has a request")
	}
}
