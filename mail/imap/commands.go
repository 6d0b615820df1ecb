package imap

import (
	"errors"
	"runtime/debug"
	"strings"
)

func stack() []byte { return debug.Stack() }

// handler runs one command whose tag and name have been read; p is at the
// first argument (after the SP following the name, if any). It returns the
// response code and text of the tagged OK ("" for the defaults), or an
// error that respFor maps to NO or BAD.
type handler func(s *session, tag string, p *parser, uid bool) (code, text string, err error)

type cmdSpec struct {
	fn     handler
	states []connState // allowed states
	// expunge: may announce expunges before the tagged response (RFC 3501
	// section 7.4.1 forbids it during FETCH, STORE and SEARCH by sequence
	// number).
	expunge bool
	// noPoll: the command does its own announcing, or none.
	noPoll bool
}

var (
	anyState    = []connState{stateNotAuth, stateAuth, stateSelected}
	notAuthOnly = []connState{stateNotAuth}
	authed      = []connState{stateAuth, stateSelected}
	selectedSt  = []connState{stateSelected}
)

var commands map[string]cmdSpec

func init() {
	commands = map[string]cmdSpec{
		"CAPABILITY":   {fn: cmdCapability, states: anyState, expunge: true},
		"NOOP":         {fn: cmdNoop, states: anyState, expunge: true},
		"CHECK":        {fn: cmdNoop, states: selectedSt, expunge: true},
		"LOGOUT":       {fn: cmdLogout, states: anyState, noPoll: true},
		"ID":           {fn: cmdID, states: anyState, expunge: true},
		"STARTTLS":     {fn: cmdStartTLS, states: notAuthOnly, noPoll: true},
		"LOGIN":        {fn: cmdLogin, states: notAuthOnly, noPoll: true},
		"AUTHENTICATE": {fn: cmdAuthenticate, states: notAuthOnly, noPoll: true},
		"ENABLE":       {fn: cmdEnable, states: authed, expunge: true},
		"NAMESPACE":    {fn: cmdNamespace, states: authed, expunge: true},
		"CREATE":       {fn: cmdCreate, states: authed, expunge: true},
		"DELETE":       {fn: cmdDelete, states: authed, expunge: true},
		"RENAME":       {fn: cmdRename, states: authed, expunge: true},
		"SUBSCRIBE":    {fn: cmdSubscribe, states: authed, expunge: true},
		"UNSUBSCRIBE":  {fn: cmdUnsubscribe, states: authed, expunge: true},
		"LIST":         {fn: cmdList, states: authed, expunge: true},
		"LSUB":         {fn: cmdLsub, states: authed, expunge: true},
		"STATUS":       {fn: cmdStatus, states: authed, expunge: true},
		"APPEND":       {fn: cmdAppend, states: authed, expunge: true},
		"SELECT":       {fn: cmdSelect, states: authed, noPoll: true},
		"EXAMINE":      {fn: cmdExamine, states: authed, noPoll: true},
		"GETQUOTA":     {fn: cmdGetQuota, states: authed, expunge: true},
		"GETQUOTAROOT": {fn: cmdGetQuotaRoot, states: authed, expunge: true},
		"SETQUOTA":     {fn: cmdSetQuota, states: authed, expunge: true},
		"IDLE":         {fn: cmdIdle, states: authed, noPoll: true},
		"CLOSE":        {fn: cmdClose, states: selectedSt, noPoll: true},
		"UNSELECT":     {fn: cmdUnselect, states: selectedSt, noPoll: true},
		"EXPUNGE":      {fn: cmdExpunge, states: selectedSt, expunge: true},
		"FETCH":        {fn: cmdFetch, states: selectedSt},
		"STORE":        {fn: cmdStore, states: selectedSt},
		"SEARCH":       {fn: cmdSearch, states: selectedSt},
		"COPY":         {fn: cmdCopy, states: selectedSt, expunge: true},
		"MOVE":         {fn: cmdMove, states: selectedSt, expunge: true},
	}
}

// uidCommands may follow "UID".
var uidCommands = map[string]bool{"FETCH": true, "STORE": true, "SEARCH": true, "COPY": true, "MOVE": true, "EXPUNGE": true}

// dispatch parses the tag and name of a command and runs it.
func (s *session) dispatch(raw []byte) {
	p := &parser{b: raw, utf8: s.utf8}
	tag := p.tag()
	p.sp()
	name := strings.ToUpper(p.atom())
	if p.err != nil {
		if tag == "" {
			tag = "*"
		}
		s.tagged(tag, bad("CLIENTBUG", "missing tag or command"))
		return
	}
	uid := false
	if name == "UID" {
		p.sp()
		name = strings.ToUpper(p.atom())
		if !uidCommands[name] {
			s.tagged(tag, bad("CLIENTBUG", "unknown UID command"))
			return
		}
		uid = true
	}
	spec, ok := commands[name]
	if !ok {
		s.tagged(tag, bad("CLIENTBUG", "unknown command"))
		return
	}
	if !inState(s.state, spec.states) {
		s.tagged(tag, bad("CLIENTBUG", name+" is not allowed now"))
		return
	}
	if !p.atEnd() {
		p.sp()
	}
	// STORE and EXPUNGE settle for themselves: a silent STORE needs
	// nothing read, and the others wait for their own, later, write.
	// LOGOUT waits too, so a client that reconnects at once sees its
	// changes, but never fails for it.
	if name != "STORE" && name != "EXPUNGE" {
		if err := s.settle(); err != nil && name != "LOGOUT" {
			s.tagged(tag, err)
			return
		}
	}
	code, text, err := spec.fn(s, tag, p, uid)
	if err == nil && p.err != nil {
		err = p.err
	}
	if errors.Is(err, errHandled) {
		return
	}
	if err != nil {
		s.tagged(tag, err)
		return
	}
	if s.state == stateSelected && !spec.noPoll {
		if perr := s.poll(spec.expunge || uid); perr != nil {
			s.log.Warn("IMAP poll failed", "err", perr)
		}
	}
	if text == "" {
		if uid {
			text = "UID " + name + " completed"
		} else {
			text = name + " completed"
		}
	}
	s.okTagged(tag, code, text)
}

func inState(st connState, states []connState) bool {
	for _, x := range states {
		if x == st {
			return true
		}
	}
	return false
}
