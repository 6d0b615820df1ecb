package delivery

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
)

// Delivery status notifications (RFC 3464): a multipart/report with a
// human-readable part, a message/delivery-status part with one block per
// recipient, and the original message (RET=FULL, the default) or its
// header (RET=HDRS, and every delay report).

// dsnRcpt is one recipient in a report.
type dsnRcpt struct {
	Address    string
	ORcpt      string // "rfc822;addr" as given in ORCPT
	Action     string // failed, delayed
	Status     string // 5.1.1
	RemoteMTA  string // host name of the server that answered, if any
	Diagnostic string // its answer ("550 5.1.1 ..."), or our reason
}

// notifyHas reports whether NOTIFY names kind explicitly.
func notifyHas(notify, kind string) bool {
	return notify != "" && wantsDSN(notify, kind)
}

// wantsDSN reports whether a recipient's NOTIFY asks for a report of kind
// ("FAILURE" or "DELAY"). No NOTIFY means failures and delays.
func wantsDSN(notify, kind string) bool {
	if notify == "" {
		return true
	}
	for _, k := range strings.Split(strings.ToUpper(notify), ",") {
		if strings.TrimSpace(k) == kind {
			return true
		}
	}
	return false
}

// buildDSN makes the report to q's sender about rcpts. msg is the queued
// message; retryUntil is set for delay reports.
func buildDSN(hostname string, q *storage.QueueEntry, msg []byte, rcpts []dsnRcpt, now time.Time, delay bool, retryUntil time.Time) []byte {
	var rb [12]byte
	_, _ = rand.Read(rb[:])
	boundary := "dsn-" + hex.EncodeToString(rb[:])
	date := now.UTC().Format(time.RFC1123Z)
	var b bytes.Buffer
	subject := "Undelivered Mail Returned to Sender"
	relayed := len(rcpts) > 0 && rcpts[0].Action == "relayed"
	switch {
	case delay:
		subject = "Delayed Mail (still being retried)"
	case relayed:
		subject = "Successful Mail Relay Report"
	}
	fmt.Fprintf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", hostname)
	fmt.Fprintf(&b, "To: <%s>\r\n", q.From)
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Date: %s\r\n", date)
	fmt.Fprintf(&b, "Message-ID: <dsn.%d.%s@%s>\r\n", q.ID, hex.EncodeToString(rb[:6]), hostname)
	b.WriteString("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n", boundary)
	b.WriteString("This is a MIME-encapsulated message.\r\n\r\n")

	// Part 1: for people.
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Description: Notification\r\n\r\n", boundary)
	fmt.Fprintf(&b, "This is the mail system at host %s.\r\n\r\n", hostname)
	if delay {
		fmt.Fprintf(&b, "Your message could not be delivered yet to the recipients below.\r\n"+
			"It will be tried again until %s; you need do nothing now.\r\n\r\n", retryUntil.UTC().Format(time.RFC1123Z))
	} else if relayed {
		b.WriteString("Your message was handed to the next server for the recipients below,\r\n" +
			"which cannot report its delivery itself. You asked to be told.\r\n\r\n")
	} else {
		b.WriteString("Your message could not be delivered to the recipients below.\r\n" +
			"It has been given up; this report is final.\r\n\r\n")
	}
	for _, r := range rcpts {
		fmt.Fprintf(&b, "<%s>: %s\r\n", r.Address, oneLine(r.Diagnostic))
	}
	b.WriteString("\r\n")

	// Part 2: for programs.
	fmt.Fprintf(&b, "--%s\r\nContent-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\n", hostname)
	if q.EnvID != "" {
		fmt.Fprintf(&b, "Original-Envelope-Id: %s\r\n", oneLine(q.EnvID))
	}
	fmt.Fprintf(&b, "Arrival-Date: %s\r\n", time.Unix(0, q.Created).UTC().Format(time.RFC1123Z))
	for _, r := range rcpts {
		b.WriteString("\r\n")
		if r.ORcpt != "" {
			o := r.ORcpt
			if !strings.Contains(o, ";") {
				o = "rfc822;" + o
			}
			fmt.Fprintf(&b, "Original-Recipient: %s\r\n", oneLine(o))
		}
		fmt.Fprintf(&b, "Final-Recipient: rfc822; %s\r\n", r.Address)
		fmt.Fprintf(&b, "Action: %s\r\n", r.Action)
		fmt.Fprintf(&b, "Status: %s\r\n", r.Status)
		if r.RemoteMTA != "" {
			fmt.Fprintf(&b, "Remote-MTA: dns; %s\r\n", r.RemoteMTA)
		}
		kind := "x-flotilla"
		if r.RemoteMTA != "" {
			kind = "smtp"
		}
		fmt.Fprintf(&b, "Diagnostic-Code: %s; %s\r\n", kind, oneLine(r.Diagnostic))
		fmt.Fprintf(&b, "Last-Attempt-Date: %s\r\n", date)
		if delay {
			fmt.Fprintf(&b, "Will-Retry-Until: %s\r\n", retryUntil.UTC().Format(time.RFC1123Z))
		}
	}
	b.WriteString("\r\n")

	// Part 3: the message, or its header.
	headersOnly := delay || relayed || strings.EqualFold(q.Ret, "HDRS") || len(msg) > 10<<20
	if headersOnly {
		fmt.Fprintf(&b, "--%s\r\nContent-Type: text/rfc822-headers\r\nContent-Description: Undelivered message headers\r\n\r\n", boundary)
		b.Write(headerOf(msg))
	} else {
		fmt.Fprintf(&b, "--%s\r\nContent-Type: message/rfc822\r\nContent-Description: Undelivered message\r\n\r\n", boundary)
		b.Write(msg)
		if !bytes.HasSuffix(msg, []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	}
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

// headerOf returns a message's header section with its final CRLF.
func headerOf(msg []byte) []byte {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+2]
	}
	return msg
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", " ")
}

// countReceived counts the Received header fields of a message: a message
// that passed more hops than a limit is in a loop.
func countReceived(msg []byte) int {
	n := 0
	h := headerOf(msg)
	for len(h) > 0 {
		line := h
		if i := bytes.Index(h, []byte("\r\n")); i >= 0 {
			line, h = h[:i], h[i+2:]
		} else {
			h = nil
		}
		if len(line) >= 9 && strings.EqualFold(string(line[:9]), "received:") {
			n++
		}
	}
	return n
}

// statusOf is the RFC 3463 status of an outcome's text.
func statusOf(text string, permanent bool) string {
	if r := newReply(0, text); r.Enhanced != "" {
		return r.Enhanced
	}
	if f := strings.Fields(text); len(f) > 1 && isEnhanced(f[1]) {
		return f[1]
	}
	if permanent {
		return "5.0.0"
	}
	return "4.0.0"
}
