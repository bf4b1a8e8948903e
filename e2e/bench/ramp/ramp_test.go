package ramp

import (
	"slices"
	"testing"
	"time"
)

// TestSearch against a system that passes up to 1,000 in short steps and
// up to 700 when held: doubling, one bisection, holds lowered by 20 %.
func TestSearch(t *testing.T) {
	var tried []int
	run := func(rate int, d time.Duration) bool {
		tried = append(tried, rate)
		if d == time.Minute {
			return rate <= 700
		}
		return rate <= 1000
	}
	held, ramped := Search(Config{Start: 100, Limit: 10000, Bisect: 2, Step: time.Second, Hold: time.Minute, HoldTries: 3}, run)
	// 100 200 400 800 1600✗ | 1200✗ 1000 | hold 1000✗ 800✗ 640
	want := []int{100, 200, 400, 800, 1600, 1200, 1000, 1000, 800, 640}
	if held != 640 || ramped != 1000 || !slices.Equal(tried, want) {
		t.Errorf("held %d ramped %d after %v; want 640, 1000 after %v", held, ramped, tried, want)
	}
	// The same with holds lowered by 10 %: 1000✗ 900✗ 810✗ 720✗ 640 (Round).
	tried = nil
	held, _ = Search(Config{Start: 100, Limit: 10000, Bisect: 2, Step: time.Second, Hold: time.Minute, HoldTries: 5, HoldCut: 10}, run)
	if want := []int{1000, 900, 810, 720, 640}; held != 640 || !slices.Equal(tried[7:], want) {
		t.Errorf("holds %v, held %d; want %v, 640", tried[7:], held, want)
	}
	tried = nil
	if held, _ := Search(Config{Start: 100, Limit: 10000, Bisect: 1, Step: time.Second, Hold: time.Minute, HoldTries: 1}, func(int, time.Duration) bool { return false }); held != 0 {
		t.Errorf("held %d for a system that passes nothing", held)
	}
	for in, want := range map[int]int{1234: 1200, 99: 99, 5600: 5600, 15360: 15000, 0: 1} {
		if got := Round(in); got != want {
			t.Errorf("Round(%d) = %d, want %d", in, got, want)
		}
	}
}
