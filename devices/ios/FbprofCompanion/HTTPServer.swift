// A minimal HTTP/1.1 server on Network.framework: one request per connection ("Connection: close"),
// bodies by Content-Length only. The head is checked (lock-out, token, framing, sizes) before any body
// byte is read; a refused body is read and dropped (bounded) before closing, so the host reads the
// answer instead of a reset (the same rules as fbprof/companion/server.py).

import Foundation
import Network

struct HTTPHead {
    let method: String
    let target: String  // path and query as sent
    let headers: [String: String]  // names lowercased
    /// Content-Length: nil when absent; `badLength` when it is not a plain number of bytes or two disagree
    let contentLength: Int?
    let badLength: Bool

    var hasLength: Bool { contentLength != nil }
    /// The body bytes that follow the head (0 when there is no Content-Length or it is unusable).
    var bodyLength: Int { badLength ? 0 : (contentLength ?? 0) }
    var chunked: Bool { headers["transfer-encoding"] != nil }

    /// 1 to 18 ASCII digits, nothing else (no sign, no spaces inside): `Int("-1")` or `Int("+5")` would pass.
    static func parseLength(_ value: String) -> Int? {
        let v = value.trimmingCharacters(in: .whitespaces)
        guard (1...18).contains(v.utf8.count), v.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Int(v)
    }

    static func parse(_ data: Data) -> HTTPHead? {
        guard let text = String(data: data, encoding: .utf8) else { return nil }
        let lines = text.components(separatedBy: "\r\n")
        let first = lines[0].split(separator: " ")
        guard first.count == 3, first[2].hasPrefix("HTTP/1.") else { return nil }
        var headers: [String: String] = [:]
        var lengths: [String] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if name == "content-length" { lengths.append(value) }
            headers[name] = value
        }
        var length: Int?
        var bad = false
        if !lengths.isEmpty {
            let parsed = lengths.map(parseLength)
            if let one = parsed[0], parsed.allSatisfy({ $0 == one }) { length = one } else { bad = true }
        }
        return HTTPHead(method: String(first[0]), target: String(first[1]), headers: headers,
                        contentLength: length, badLength: bad)
    }
}

struct HTTPResponse {
    let status: Int
    let body: Data
    var headers: [String: String] = [:]

    static func json<T: Encodable>(_ status: Int, _ value: T) -> HTTPResponse {
        HTTPResponse(status: status, body: (try? JSONEncoder().encode(value)) ?? Data("{}".utf8))
    }

    static func error(_ e: WireError) -> HTTPResponse {
        var r = HTTPResponse.json(e.status, e)
        if let retry = e.retryAfter { r.headers["Retry-After"] = String(retry) }
        return r
    }
}

protocol HTTPHandler: AnyObject {
    /// Called with the head only: return a response to refuse the request before reading its body.
    func check(_ head: HTTPHead) -> HTTPResponse?
    func handle(_ head: HTTPHead, body: Data) -> HTTPResponse
}

/// A request body being received: a class, so appending a chunk does not copy what came before.
private final class BodyBuffer {
    var data = Data()
    let length: Int

    init(length: Int, first: Data) {
        self.length = length
        data.reserveCapacity(length)
        data.append(first.prefix(length))
    }
}

final class HTTPServer {
    private let listener: NWListener
    private let io = DispatchQueue(label: "fbprof.http.io", qos: .userInitiated)
    // serial: one request handled at a time; user-interactive so that predictions run on the performance cores
    private let work = DispatchQueue(label: "fbprof.http.work", qos: .userInteractive)
    private weak var handler: HTTPHandler?
    private let maxHead = 16 << 10
    /// a refused body is read and dropped up to this size before closing; a larger one is cut (the host
    /// then asks GET /v1/info to learn why)
    private let maxDrain = 64 << 20

    init(port: UInt16, handler: HTTPHandler) throws {
        let parameters = NWParameters.tcp
        parameters.allowLocalEndpointReuse = true  // a quick relaunch must not fail with "address in use"
        guard let nwPort = NWEndpoint.Port(rawValue: port) else { throw WireError.internalError("bad port \(port)") }
        listener = try NWListener(using: parameters, on: nwPort)
        listener.service = NWListener.Service(type: Wire.serviceType,  // Bonjour: _fbprof._tcp, TXT protocol=1
                                              txtRecord: NWTXTRecord(["protocol": String(Wire.version)]).data)
        self.handler = handler
    }

    func start(onState: @escaping (NWListener.State) -> Void) {
        listener.stateUpdateHandler = onState
        listener.newConnectionHandler = { [weak self] connection in self?.accept(connection) }
        listener.start(queue: io)
    }

    func stop() {
        listener.stateUpdateHandler = nil
        listener.newConnectionHandler = nil
        listener.cancel()
    }

    private func accept(_ connection: NWConnection) {
        connection.start(queue: io)
        readHead(connection, buffer: Data())
    }

    private func readHead(_ c: NWConnection, buffer: Data) {
        c.receive(minimumIncompleteLength: 1, maximumLength: 64 << 10) { [weak self] data, _, complete, error in
            guard let self else { return c.cancel() }
            var buffer = buffer
            if let data { buffer.append(data) }
            guard let end = buffer.range(of: Data("\r\n\r\n".utf8)) else {
                if buffer.count > self.maxHead || complete || error != nil { c.cancel() } else { self.readHead(c, buffer: buffer) }
                return
            }
            guard let head = HTTPHead.parse(buffer[..<end.lowerBound]) else {
                return self.send(c, .error(.badRequest("malformed HTTP request")), drain: 0)
            }
            let rest = Data(buffer[end.upperBound...])
            guard let handler = self.handler else { return c.cancel() }
            if let refusal = handler.check(head) {
                // the end of a body is unknown without a usable length: nothing to drain, just close
                let unread = head.badLength || head.chunked ? 0 : max(0, head.bodyLength - rest.count)
                return self.send(c, refusal, drain: unread)
            }
            self.readBody(c, head: head, body: BodyBuffer(length: head.bodyLength, first: rest))
        }
    }

    private func readBody(_ c: NWConnection, head: HTTPHead, body: BodyBuffer) {
        if body.data.count >= body.length {
            let payload = body.data
            work.async { [weak self] in
                guard let self, let handler = self.handler else { return c.cancel() }
                self.send(c, handler.handle(head, body: payload), drain: 0)
            }
            return
        }
        let want = min(1 << 20, body.length - body.data.count)
        c.receive(minimumIncompleteLength: 1, maximumLength: want) { [weak self] data, _, complete, error in
            guard let self else { return c.cancel() }
            guard let data, error == nil else { return c.cancel() }
            body.data.append(data)
            if complete && body.data.count < body.length { return c.cancel() }
            self.readBody(c, head: head, body: body)
        }
    }

    /// Answer and close. `drain`: body bytes still on their way; read and dropped first (up to `maxDrain`),
    /// because closing on unread bytes makes the phone's TCP stack answer the host with a reset.
    private func send(_ c: NWConnection, _ r: HTTPResponse, drain: Int) {
        let reason = HTTPURLResponse.localizedString(forStatusCode: r.status).capitalized
        var head = "HTTP/1.1 \(r.status) \(reason)\r\n"
        head += "Content-Type: application/json\r\nContent-Length: \(r.body.count)\r\nConnection: close\r\n"
        if r.status == 401 { head += "WWW-Authenticate: Bearer realm=\"fbprof-companion\"\r\n" }
        for (name, value) in r.headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        let maxDrain = self.maxDrain
        c.send(content: Data(head.utf8) + r.body, completion: .contentProcessed { [weak self] _ in
            guard let self, drain > 0, drain <= maxDrain else { return c.cancel() }
            self.io.asyncAfter(deadline: .now() + 10) { c.cancel() }  // a host that never sends its body
            self.discard(c, remaining: drain)
        })
    }

    private func discard(_ c: NWConnection, remaining: Int) {
        guard remaining > 0 else { return c.cancel() }
        c.receive(minimumIncompleteLength: 1, maximumLength: min(1 << 20, remaining)) { [weak self] data, _, complete, error in
            guard let self, let data, error == nil, !complete else { return c.cancel() }
            self.discard(c, remaining: remaining - data.count)
        }
    }
}
