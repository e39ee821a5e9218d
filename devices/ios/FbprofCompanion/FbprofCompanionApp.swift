// fbprof companion: shows the address and pairing token, serves the protocol while the app is open.

import Network
import Security
import SwiftUI
import UIKit

@main
struct FbprofCompanionApp: App {
    @StateObject private var state = CompanionState()
    @Environment(\.scenePhase) private var scenePhase

    var body: some Scene {
        WindowGroup {
            ContentView(state: state)
                .onAppear {
                    state.start()
                    UIApplication.shared.isIdleTimerDisabled = true  // iOS suspends apps that leave the screen
                }
        }
        .onChange(of: scenePhase) { phase in
            if phase == .active { state.start() }  // back from the background: listen again if the listener died
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
    private var needsListener = true  // no listener yet, or the last one failed or was cancelled
    private var restartScheduled = false
    private var generation = 0  // which listener a state change comes from: a stopped one's are ignored

    /// Start listening, or start again when the listener failed or was cancelled (after the app was in the
    /// background its socket can be gone). A listener that is starting or running is left alone.
    func start() {
        guard needsListener else { return }
        needsListener = false
        generation += 1
        let current = generation
        server?.stop()
        server = nil
        do {
            let companion: Companion
            if let existing = self.companion {
                companion = existing
            } else {
                companion = try Companion(token: token) { [weak self] line in
                    // a `let` copy: a `weak var` captured by the @Sendable Task closure does not compile on Xcode 15
                    let state = self
                    Task { @MainActor in state?.append(line) }
                }
                self.companion = companion
            }
            let server = try HTTPServer(port: Wire.defaultPort, handler: companion)
            server.start { [weak self] listenerState in
                let state = self
                Task { @MainActor in state?.listenerChanged(listenerState, generation: current) }
            }
            self.server = server
        } catch {
            status = "failed: \(error)"
            needsListener = true
            scheduleRestart()
        }
    }

    private func listenerChanged(_ listenerState: NWListener.State, generation: Int) {
        guard generation == self.generation else { return }
        switch listenerState {
        case .ready:
            status = "ready"
            address = "\(wifiAddress() ?? "this-phone"):\(Wire.defaultPort)"
        case .failed(let error):
            needsListener = true
            status = "failed: \(error); listening again"
            scheduleRestart()
        case .cancelled:
            needsListener = true
        default:
            break
        }
    }

    private func scheduleRestart() {
        guard !restartScheduled else { return }
        restartScheduled = true
        Task { @MainActor [weak self] in
            try? await Task.sleep(nanoseconds: 1_000_000_000)
            guard let self else { return }
            self.restartScheduled = false
            self.start()
        }
    }

    private func append(_ line: String) {
        lines.append(line)
        if lines.count > 200 { lines.removeFirst(lines.count - 200) }
    }

    /// 16 characters from an unambiguous 32-letter alphabet (80 bits) from the system CSPRNG, made once and
    /// kept in the Keychain (this device only, not in backups): never in a file such as UserDefaults' plist.
    static func pairingToken() -> String {
        UserDefaults.standard.removeObject(forKey: "token")  // the plaintext 8-character token of earlier versions
        if let saved = Keychain.read(), saved.count >= Wire.minTokenChars { return saved }
        let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        var rng = SystemRandomNumberGenerator()
        let token = String((0..<Wire.minTokenChars).map { _ in alphabet[Int(rng.next(upperBound: UInt32(alphabet.count)))] })
        Keychain.save(token)
        return token
    }
}

/// The pairing token in the Keychain (a generic password of this app).
enum Keychain {
    private static let query: [String: Any] = [kSecClass as String: kSecClassGenericPassword,
                                               kSecAttrService as String: "fbprof-companion",
                                               kSecAttrAccount as String: "pairing-token"]

    static func read() -> String? {
        var q = query
        q[kSecReturnData as String] = true
        q[kSecMatchLimit as String] = kSecMatchLimitOne
        var item: CFTypeRef?
        guard SecItemCopyMatching(q as CFDictionary, &item) == errSecSuccess, let data = item as? Data else { return nil }
        return String(data: data, encoding: .utf8)
    }

    static func save(_ token: String) {
        SecItemDelete(query as CFDictionary)
        var q = query
        q[kSecValueData as String] = Data(token.utf8)
        q[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        SecItemAdd(q as CFDictionary, nil)  // if it fails the token lives for this launch only
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
