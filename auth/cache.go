package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"
)

// Verified credentials are remembered for a while, so that a mail client
// logging in every few minutes with the same password costs one hash
// computation per cacheTTL instead of one per login. The cache belongs to one
// load of the users file: any change to the file (a new password, a disabled
// user) gives a new load and so an empty cache. Only successes are cached, so
// a hit tells the client nothing it did not know: it sent the right password.
// Keys are HMAC-SHA256 under a random per-process key of user and password, so
// the cache holds no password nor any hash that could be attacked offline
// without that key.
const (
	cacheTTL     = 15 * time.Minute
	cacheEntries = 1 << 16
)

var cacheKeyKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
})

type credCache struct {
	mu sync.Mutex
	m  map[[32]byte]time.Time // key → when verified
}

func cacheKey(name, password string) [32]byte {
	mac := hmac.New(sha256.New, cacheKeyKey())
	mac.Write([]byte(name))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var k [32]byte
	mac.Sum(k[:0])
	return k
}

// hit reports whether the key was verified less than cacheTTL ago.
func (c *credCache) hit(k [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.m[k]
	if ok && time.Since(t) >= cacheTTL {
		delete(c.m, k)
		return false
	}
	return ok
}

// add remembers a verified key. A full cache first drops its expired
// entries, and everything if none has expired.
func (c *credCache) add(k [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[[32]byte]time.Time)
	}
	if len(c.m) >= cacheEntries {
		for key, t := range c.m {
			if time.Since(t) >= cacheTTL {
				delete(c.m, key)
			}
		}
		if len(c.m) >= cacheEntries {
			clear(c.m)
		}
	}
	c.m[k] = time.Now()
}
