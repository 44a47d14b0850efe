// Command strength measures the password policy on random passwords: how
// many bits auth.EstimateBits gives them (the least, and the lowest
// quantiles), how many auth.CheckStrength refuses, and how long a check
// takes. Its first line says what was measured.
//
//	go run ./bench/strength -n 1000000 -length 12
package main

import (
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/pouchmail/pouch/auth"
)

func main() {
	n := flag.Int("n", 1_000_000, "how many random `passwords`")
	length := flag.Int("length", 12, "characters in each")
	alphabet := flag.String("alphabet", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "characters to draw from")
	seed := flag.Uint64("seed", 1, "random `seed`")
	flag.Parse()
	if *n <= 0 || *length <= 0 || *alphabet == "" {
		log.Fatal("strength: -n, -length and -alphabet must not be empty or zero")
	}

	workers := runtime.GOMAXPROCS(0)
	bits := make([]float64, *n)
	var (
		mu      sync.Mutex
		refused []string
		wg      sync.WaitGroup
	)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(*seed, uint64(w)))
			b := make([]byte, *length)
			for i := w; i < *n; i += workers {
				for j := range b {
					b[j] = (*alphabet)[rng.IntN(len(*alphabet))]
				}
				bits[i] = auth.EstimateBits(string(b), "alice")
				if auth.CheckStrength(string(b), "", "alice") != nil {
					mu.Lock()
					refused = append(refused, string(b))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	slices.Sort(bits)
	q := func(p float64) float64 { return bits[min(len(bits)-1, int(p*float64(len(bits))))] }
	fmt.Printf("%d random passwords of %d characters from %d, seed %d, %d workers\n", *n, *length, len(*alphabet), *seed, workers)
	fmt.Printf("bits: least %.2f, 1e-5 %.2f, 1e-4 %.2f, 1e-3 %.2f, median %.2f (the bar: %d)\n",
		bits[0], q(1e-5), q(1e-4), q(1e-3), q(0.5), auth.MinPasswordBits)
	fmt.Printf("refused: %d %q\n", len(refused), refused[:min(len(refused), 10)])
	fmt.Printf("time: %v a password (estimate and check, one worker)\n", took*time.Duration(workers)/time.Duration(*n)/2)
}
