// Command latencyproxy forwards TCP connections and delays every chunk of
// data by a fixed time in each direction, to measure POP3 clients as if the
// server were far away. Bandwidth is not limited.
//
//	latencyproxy -listen 127.0.0.1:11111 -to 127.0.0.1:11110 -delay 20ms
package main

import (
	"flag"
	"log"
	"net"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen `address`")
	to := flag.String("to", "", "upstream `address`")
	delay := flag.Duration("delay", 20*time.Millisecond, "one-way `delay`")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			u, err := net.Dial("tcp", *to)
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			go pipe(u, c, *delay)
			pipe(c, u, *delay)
		}()
	}
}

type chunk struct {
	data []byte
	at   time.Time
}

// pipe copies src to dst, each chunk delivered delay after it was read.
func pipe(dst, src net.Conn, delay time.Duration) {
	q := make(chan chunk, 4096)
	go func() {
		defer dst.(*net.TCPConn).CloseWrite()
		for ch := range q {
			if d := time.Until(ch.at); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.data); err != nil {
				src.Close()
				for range q {
				}
				return
			}
		}
	}()
	for {
		buf := make([]byte, 64<<10)
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{buf[:n], time.Now().Add(delay)}
		}
		if err != nil {
			close(q)
			return
		}
	}
}
