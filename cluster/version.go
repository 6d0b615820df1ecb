package cluster

// BuildVersion names this build; set at link time
// (-ldflags "-X github.com/flotilla-mail/flotilla/cluster.BuildVersion=...").
var BuildVersion = "dev"
