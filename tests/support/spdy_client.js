// A SPDY/3.1 client for the tests of hyperd's CRI streaming server, on npm's
// spdy-transport: an implementation independent of the server's
// (hyper.cri.spdy). It upgrades an HTTP/1.1 connection as client-go does
// (Upgrade: SPDY/3.1, X-Stream-Protocol-Version), then obeys the test,
// one JSON command a line on stdin, and reports what the server did, one JSON
// event a line on stdout. Bytes travel as base64.
//
//   node spdy_client.js URL PROTOCOL[,PROTOCOL...] [WINDOW]
//
// commands: {"op": "open", "id": NAME, "headers": {...}}  a stream (SYN_STREAM)
//           {"op": "write", "id": NAME, "data": B64}
//           {"op": "end", "id": NAME}                    the stream's FIN
//           {"op": "close"}                              GOAWAY, then the socket's end
// events:   {"ev": "upgraded", "protocol": P} | {"ev": "refused", "status": N, "body": TEXT}
//           {"ev": "reply", "id": NAME}  {"ev": "data", "id": NAME, "data": B64}
//           {"ev": "end", "id": NAME}    {"ev": "error", "id": NAME, "message": TEXT}
//           {"ev": "closed"}
'use strict'

const net = require('net')
const readline = require('readline')
const transport = require('spdy-transport')

const [url, protocols, window] = process.argv.slice(2)
const target = new URL(url)
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n')

const socket = net.connect(Number(target.port), target.hostname)
socket.once('connect', () => {
  const lines = [
    `GET ${target.pathname}${target.search} HTTP/1.1`,
    `Host: ${target.host}`,
    'Connection: Upgrade',
    'Upgrade: SPDY/3.1'
  ]
  for (const protocol of protocols.split(',')) lines.push(`X-Stream-Protocol-Version: ${protocol}`)
  socket.write(lines.join('\r\n') + '\r\n\r\n')
})

let head = Buffer.alloc(0)
function onHead (chunk) {
  head = Buffer.concat([head, chunk])
  const end = head.indexOf('\r\n\r\n')
  if (end < 0) return
  socket.removeListener('data', onHead)
  const text = head.subarray(0, end).toString()
  const rest = head.subarray(end + 4)
  const status = Number(text.split(' ')[1])
  if (status !== 101) {
    say({ ev: 'refused', status, body: rest.toString() })
    socket.destroy()
    process.exit(0)
  }
  const chosen = /x-stream-protocol-version: *(\S+)/i.exec(text)
  say({ ev: 'upgraded', protocol: chosen ? chosen[1] : '' })
  socket.pause()
  if (rest.length) socket.unshift(rest)
  session(socket)
}
socket.on('data', onHead)
socket.on('error', (err) => say({ ev: 'error', id: '', message: String(err) }))
socket.on('close', () => { say({ ev: 'closed' }); process.exit(0) })

function session (socket) {
  const options = { protocol: 'spdy', isServer: false }
  if (window) options.windowSize = Number(window)
  const connection = transport.connection.create(socket, options)
  connection.start(3.1)
  connection.on('error', (err) => say({ ev: 'error', id: '', message: String(err) }))
  const streams = {}
  const input = readline.createInterface({ input: process.stdin })
  input.on('line', (line) => {
    const command = JSON.parse(line)
    if (command.op === 'open') {
      const stream = connection.request({
        method: 'POST', path: target.pathname, host: target.host, headers: command.headers, readable: true, writable: true
      })
      streams[command.id] = stream
      stream.on('response', () => say({ ev: 'reply', id: command.id }))
      stream.on('data', (data) => say({ ev: 'data', id: command.id, data: data.toString('base64') }))
      stream.on('end', () => say({ ev: 'end', id: command.id }))
      stream.on('error', (err) => say({ ev: 'error', id: command.id, message: String(err) }))
    } else if (command.op === 'write') {
      streams[command.id].write(Buffer.from(command.data, 'base64'))
    } else if (command.op === 'end') {
      streams[command.id].end()
    } else if (command.op === 'close') {
      connection.end(() => socket.end())
    }
  })
  input.on('close', () => socket.destroy())
}
