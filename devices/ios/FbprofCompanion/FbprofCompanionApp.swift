// fbprof companion: shows the address and pairing token, serves the protocol while the app is open.

import SwiftUI
import UIKit

@main
struct FbprofCompanionApp: App {
    @StateObject private var state = CompanionState()

    var body: some Scene {
        WindowGroup {
            ContentView(state: state)
                .onAppear {
                    state.start()
                    UIApplication.shared.isIdleTimerDisabled = true  // iOS suspends apps that leave the screen
                }
        }
    }
}

@MainActor
final class CompanionState: ObservableObject {
    @Published var status = "starting"
    @Published var address = "-"
    @Published var lines: [String] = []
    let token = CompanionState.pairingToken()
    private var companion: Companion?
    private var server: HTTPServer?

    func start() {
        guard server == nil else { return }
        do {
            let companion = try Companion(token: token) { [weak self] line in
                Task { @MainActor in self?.append(line) }
            }
            let server = try HTTPServer(port: Wire.defaultPort, handler: companion)
            server.start { [weak self] listenerState in
                Task { @MainActor in
                    guard let self else { return }
                    switch listenerState {
                    case .ready:
                        self.status = "ready"
                        self.address = "\(wifiAddress() ?? "this-phone"):\(Wire.defaultPort)"
                    case .failed(let error): self.status = "failed: \(error)"
                    default: break
                    }
                }
            }
            self.companion = companion
            self.server = server
        } catch {
            status = "failed: \(error)"
        }
    }

    private func append(_ line: String) {
        lines.append(line)
        if lines.count > 200 { lines.removeFirst(lines.count - 200) }
    }

    /// 8 characters from an unambiguous alphabet, made once and kept.
    static func pairingToken() -> String {
        if let saved = UserDefaults.standard.string(forKey: "token") { return saved }
        let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        var rng = SystemRandomNumberGenerator()
        let token = String((0..<8).map { _ in alphabet[Int(rng.next(upperBound: UInt32(alphabet.count)))] })
        UserDefaults.standard.set(token, forKey: "token")
        return token
    }
}

struct ContentView: View {
    @ObservedObject var state: CompanionState

    var body: some View {
        VStack(alignment: .leading, spacing: 12) {
            Text("fbprof companion").font(.title).bold()
            Text("status: \(state.status)")
            Text("address: \(state.address)").font(.system(.body, design: .monospaced))
            Text("token: \(state.token)").font(.system(.title2, design: .monospaced))
            Text("fbprof measure --device ios:\(state.address) --profile iphonex --token \(state.token)")
                .font(.system(.footnote, design: .monospaced))
                .textSelection(.enabled)
            Divider()
            ScrollView {
                VStack(alignment: .leading) {
                    ForEach(Array(state.lines.enumerated()), id: \.offset) { _, line in
                        Text(line).font(.system(.caption, design: .monospaced))
                    }
                }
            }
        }
        .padding()
    }
}

/// The phone's IPv4 address on Wi-Fi (en0), shown so the host knows where to connect.
func wifiAddress() -> String? {
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0, let first = list else { return nil }
    defer { freeifaddrs(list) }
    for ptr in sequence(first: first, next: { $0.pointee.ifa_next }) {
        let ifa = ptr.pointee
        guard String(cString: ifa.ifa_name) == "en0", let addr = ifa.ifa_addr, addr.pointee.sa_family == UInt8(AF_INET) else { continue }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        if getnameinfo(addr, socklen_t(addr.pointee.sa_len), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 {
            return String(cString: host)
        }
    }
    return nil
}
