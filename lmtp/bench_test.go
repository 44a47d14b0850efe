package lmtp

import (
	"strings"
	"sync"
	"testing"
)

// BenchmarkDelivery measures LMTP deliveries of 10 KB messages over loopback
// into a Maildir, each acknowledged only after fsync of the file and of new/.
func BenchmarkDelivery(b *testing.B) {
	msg := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 128)
	for _, bc := range []struct {
		name  string
		conns int
		rcpts []string
		quota bool
	}{
		{"10KB/1conn", 1, []string{"alice@example.org"}, false},
		{"10KB/4conns", 4, []string{"alice@example.org"}, false},
		{"10KB/1conn/2rcpts", 1, []string{"alice@example.org", "carol@example.org"}, false},
		{"10KB/1conn/quota", 1, []string{"alice@example.org"}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, nil)
			if bc.quota {
				e.agent.Quota = Quota{Storage: 1 << 40, Messages: 1 << 30}
			}
			b.SetBytes(int64(len(msg)))
			var wg sync.WaitGroup
			per := (b.N + bc.conns - 1) / bc.conns
			b.ResetTimer()
			for range bc.conns {
				c := e.client()
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range per {
						if err := c.SendMail("s@example.net", bc.rcpts, strings.NewReader(msg)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(per*bc.conns)/b.Elapsed().Seconds(), "messages/s")
			b.ReportMetric(float64(per*bc.conns*len(bc.rcpts))/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}
