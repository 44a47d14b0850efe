package maildir

import (
	"testing"

	"github.com/pouchmail/pouch/store/storetest"
)

func TestRetentionConformance(t *testing.T) {
	storetest.RunRetention(t, func(t *testing.T) storetest.RetentionBackend { return New(t.TempDir()) })
}
