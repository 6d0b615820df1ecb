package pop3

import (
	"bufio"
	"errors"
	"io"
)

// writeMessage copies a message from r to w as the body of a multi-line
// response (RFC 1939 section 3): a line starting with "." gets another "."
// in front, a bare LF becomes CRLF, a last line without a line ending gets
// one, and ".\r\n" ends the response. With bodyLines >= 0 (TOP) it stops
// after the header, the empty line ending it and bodyLines lines of body;
// with bodyLines < 0 (RETR) it copies everything. It returns the number of
// octets read from r; a read error leaves the response unfinished.
func writeMessage(w *bufio.Writer, r io.Reader, bufSize, bodyLines int) (int64, error) {
	br := bufio.NewReaderSize(r, bufSize)
	var (
		read      int64
		atStart   = true  // the next byte begins a line
		lastCR    = false // the last byte written to w was CR
		lineLen   = 0     // bytes of the current line written so far
		inBody    = false // the empty line after the header has been seen
		bodyCount = 0     // complete body lines written
	)
	for {
		if atStart && inBody && bodyLines >= 0 && bodyCount >= bodyLines {
			break
		}
		chunk, err := br.ReadSlice('\n')
		read += int64(len(chunk))
		if len(chunk) > 0 {
			if atStart && chunk[0] == '.' {
				w.WriteByte('.')
			}
			content := chunk
			complete := chunk[len(chunk)-1] == '\n'
			if complete {
				content = chunk[:len(chunk)-1]
			}
			w.Write(content)
			if len(content) > 0 {
				lastCR = content[len(content)-1] == '\r'
			}
			lineLen += len(content)
			atStart = false
			if complete {
				if !lastCR {
					w.WriteByte('\r')
					lineLen++
				}
				w.WriteByte('\n')
				empty := lineLen == 1 // just the CR of CRLF
				switch {
				case inBody:
					bodyCount++
				case empty:
					inBody = true
				}
				atStart, lastCR, lineLen = true, false, 0
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return read, err
		}
	}
	if !atStart {
		if !lastCR {
			w.WriteByte('\r')
		}
		w.WriteByte('\n')
	}
	_, err := w.WriteString(".\r\n")
	return read, err
}
