// A minimal HTTP/1.1 server on Network.framework: one request per connection ("Connection: close"),
// bodies by Content-Length only. The head is checked (token, sizes) before any body byte is read.

import Foundation
import Network

struct HTTPHead {
    let method: String
    let target: String  // path and query as sent
    let headers: [String: String]  // names lowercased

    var contentLength: Int? { headers["content-length"].flatMap { Int($0) } }

    static func parse(_ data: Data) -> HTTPHead? {
        guard let text = String(data: data, encoding: .utf8) else { return nil }
        let lines = text.components(separatedBy: "\r\n")
        let first = lines[0].split(separator: " ")
        guard first.count == 3, first[2].hasPrefix("HTTP/1.") else { return nil }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return HTTPHead(method: String(first[0]), target: String(first[1]), headers: headers)
    }
}

struct HTTPResponse {
    let status: Int
    let body: Data

    static func json<T: Encodable>(_ status: Int, _ value: T) -> HTTPResponse {
        HTTPResponse(status: status, body: (try? JSONEncoder().encode(value)) ?? Data("{}".utf8))
    }

    static func error(_ e: WireError) -> HTTPResponse { .json(e.status, e) }
}

protocol HTTPHandler: AnyObject {
    /// Called with the head only: return a response to refuse the request before reading its body.
    func check(_ head: HTTPHead) -> HTTPResponse?
    func handle(_ head: HTTPHead, body: Data) -> HTTPResponse
}

final class HTTPServer {
    private let listener: NWListener
    private let io = DispatchQueue(label: "fbprof.http.io")
    private let work = DispatchQueue(label: "fbprof.http.work")  // serial: one request handled at a time
    private weak var handler: HTTPHandler?
    private let maxHead = 16 << 10

    init(port: UInt16, handler: HTTPHandler) throws {
        listener = try NWListener(using: .tcp, on: NWEndpoint.Port(rawValue: port)!)
        listener.service = NWListener.Service(type: Wire.serviceType,  // Bonjour: _fbprof._tcp, TXT protocol=1
                                              txtRecord: NWTXTRecord(["protocol": String(Wire.version)]).data)
        self.handler = handler
    }

    func start(onState: @escaping (NWListener.State) -> Void) {
        listener.stateUpdateHandler = onState
        listener.newConnectionHandler = { [weak self] connection in self?.accept(connection) }
        listener.start(queue: io)
    }

    func stop() { listener.cancel() }

    private func accept(_ connection: NWConnection) {
        connection.start(queue: io)
        readHead(connection, buffer: Data())
    }

    private func readHead(_ c: NWConnection, buffer: Data) {
        c.receive(minimumIncompleteLength: 1, maximumLength: 64 << 10) { [weak self] data, _, complete, error in
            guard let self else { return }
            var buffer = buffer
            if let data { buffer.append(data) }
            guard let end = buffer.range(of: Data("\r\n\r\n".utf8)) else {
                if buffer.count > self.maxHead || complete || error != nil { c.cancel() } else { self.readHead(c, buffer: buffer) }
                return
            }
            guard let head = HTTPHead.parse(buffer[..<end.lowerBound]) else {
                return self.send(c, .error(.badRequest("malformed HTTP request")))
            }
            if let refusal = self.handler?.check(head) {
                return self.send(c, refusal)
            }
            self.readBody(c, head: head, body: Data(buffer[end.upperBound...]))
        }
    }

    private func readBody(_ c: NWConnection, head: HTTPHead, body: Data) {
        let length = head.contentLength ?? 0
        if body.count >= length {
            let payload = body.prefix(length)
            work.async { [weak self] in
                guard let self, let handler = self.handler else { return c.cancel() }
                self.send(c, handler.handle(head, body: payload))
            }
            return
        }
        c.receive(minimumIncompleteLength: 1, maximumLength: 1 << 20) { [weak self] data, _, complete, error in
            guard let self else { return }
            guard let data, error == nil else { return c.cancel() }
            var body = body
            body.append(data)
            if complete && body.count < length { return c.cancel() }
            self.readBody(c, head: head, body: body)
        }
    }

    private func send(_ c: NWConnection, _ r: HTTPResponse) {
        let reason = HTTPURLResponse.localizedString(forStatusCode: r.status).capitalized
        var head = "HTTP/1.1 \(r.status) \(reason)\r\n"
        head += "Content-Type: application/json\r\nContent-Length: \(r.body.count)\r\nConnection: close\r\n"
        if r.status == 401 { head += "WWW-Authenticate: Bearer realm=\"fbprof-companion\"\r\n" }
        head += "\r\n"
        c.send(content: Data(head.utf8) + r.body, completion: .contentProcessed { _ in c.cancel() })
    }
}
