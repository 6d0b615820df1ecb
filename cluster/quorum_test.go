package cluster

import (
	"testing"

	"github.com/hashicorp/raft"
)

func TestPairMajority(t *testing.T) {
	cfg := func(voters int, nonvoters ...string) raft.Configuration {
		var c raft.Configuration
		for i := 1; i <= voters; i++ {
			c.Servers = append(c.Servers, raft.Server{ID: raft.ServerID("n" + string(rune('0'+i))), Suffrage: raft.Voter})
		}
		for _, id := range nonvoters {
			c.Servers = append(c.Servers, raft.Server{ID: raft.ServerID(id), Suffrage: raft.Nonvoter})
		}
		return c
	}
	for _, tc := range []struct {
		name         string
		c            raft.Configuration
		self, leader raft.ServerID
		want         bool
	}{
		{"three voters", cfg(3), "n2", "n1", true},
		{"two voters", cfg(2), "n2", "n1", true},
		{"five voters", cfg(5), "n2", "n1", false},
		{"four voters", cfg(4), "n2", "n1", false},
		{"self a nonvoter", cfg(3, "n9"), "n9", "n1", false},
		{"leader unknown", cfg(3), "n2", "n7", false},
		{"self not in the configuration", cfg(3), "n8", "n1", false},
		{"three voters and a nonvoter", cfg(3, "n9"), "n3", "n1", true},
		{"self is the leader", cfg(3), "n1", "n1", false},
		{"empty", raft.Configuration{}, "n1", "n2", false},
	} {
		if got := pairMajority(tc.c, tc.self, tc.leader); got != tc.want {
			t.Errorf("%s: pairMajority = %v, want %v", tc.name, got, tc.want)
		}
	}
}
