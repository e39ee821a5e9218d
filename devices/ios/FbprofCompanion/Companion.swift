// The companion: token check, limits, the model store (zip upload, zip-slip checks) and the Core ML
// runner with fbprof's measuring loop (fbprof/profiler/loop.py, mirrored in runLoop below).

import CoreML
import Foundation
import ZIPFoundation

final class Companion: HTTPHandler {
    let token: String
    let limits = Limits()
    private let store: URL
    private var models: [String: (manifest: Manifest, bytes: Int)] = [:]
    private var loaded: [String: MLModel] = [:]  // "name|compute units" -> model
    private let log: (String) -> Void
    private var lockout = Lockout()  // used from the listener's queue only (check)
    private let units = ComputeUnitsOnThisDevice()

    init(token: String, log: @escaping (String) -> Void) throws {
        guard token.count >= Wire.minTokenChars else {
            throw WireError.internalError("the pairing token must have at least \(Wire.minTokenChars) characters")
        }
        self.token = token
        self.log = log
        store = FileManager.default.temporaryDirectory.appendingPathComponent("models", isDirectory: true)
        try? FileManager.default.removeItem(at: store)  // models (and their compiled .mlmodelc) of an earlier run
        // .mlmodelc folders that earlier versions of the app left in tmp, one per compile
        let tmp = FileManager.default.temporaryDirectory
        for url in (try? FileManager.default.contentsOfDirectory(at: tmp, includingPropertiesForKeys: nil)) ?? []
        where url.pathExtension == "mlmodelc" {
            try? FileManager.default.removeItem(at: url)
        }
        try FileManager.default.createDirectory(at: store, withIntermediateDirectories: true)
    }

    // MARK: HTTPHandler

    /// The head's checks, in the reference companion's order: lock-out 429, token 401, framing 400/411,
    /// size 413 (for every method: a GET announcing 10 GB is refused here, not buffered).
    func check(_ head: HTTPHead) -> HTTPResponse? {
        let wait = lockout.waitS(now: now())
        if wait > 0 { return .error(.tooManyAttempts(max(1, Int(wait.rounded(.up))))) }
        guard authorized(head.headers["authorization"]) else {
            lockout.failed(now: now())
            return .error(.unauthorized)
        }
        lockout.succeeded()
        if head.badLength {
            let given = head.headers["content-length"] ?? ""
            return .error(.badRequest("Content-Length '\(given.prefix(40))' is not a number of bytes"))
        }
        if head.chunked { return .error(.lengthRequired) }
        let limit = head.method == "PUT" ? limits.max_upload_bytes : limits.max_json_bytes
        if head.bodyLength > limit {
            return .error(.tooLarge("request body of \(head.bodyLength) bytes is over the limit of \(limit) bytes"))
        }
        return nil
    }

    func handle(_ head: HTTPHead, body: Data) -> HTTPResponse {
        do {
            return try route(head, body: body)
        } catch let e as WireError {
            log("\(head.method) \(head.target): \(e.status) \(e.error)")
            return .error(e)
        } catch {
            return .error(.internalError(String(describing: error)))
        }
    }

    private func route(_ head: HTTPHead, body: Data) throws -> HTTPResponse {
        let path = head.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard path.hasPrefix(Wire.api + "/") else {
            throw WireError.notFound("no endpoint \(head.method) \(path) (this companion speaks \(Wire.api))")
        }
        let parts = path.dropFirst(Wire.api.count + 1).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        switch (head.method, parts.count, parts[0]) {
        case ("GET", 1, "info"):  // GET /v1/info
            return .json(200, info())
        case ("GET", 1, "models"):  // GET /v1/models
            let list = models.keys.sorted().map { ModelEntry(name: $0, format: models[$0]!.manifest.format, bytes: models[$0]!.bytes) }
            return .json(200, ModelsResponse(models: list))
        case (_, 2...3, "models"):
            let name = parts[1].removingPercentEncoding ?? parts[1]
            guard validName(name) else { throw WireError.badName(name) }
            if parts.count == 2 && head.method == "PUT" {
                guard head.hasLength else { throw WireError.lengthRequired }  // after the name, like the reference
                return .json(201, try upload(name, body))
            }
            if parts.count == 2 && head.method == "DELETE" { return .json(200, try delete(name)) }
            if parts.count == 3 && parts[2] == "run" && head.method == "POST" {
                guard head.hasLength else { throw WireError.lengthRequired }
                let request: RunRequest
                do { request = try JSONDecoder().decode(RunRequest.self, from: body.isEmpty ? Data("{}".utf8) : body) }
                catch { throw WireError.badRequest("the body is not a valid run request: \(error.localizedDescription)") }
                return .json(200, try run(name, request))
            }
            throw WireError.badMethod("\(head.method) is not allowed on \(path)")
        default:
            throw WireError.notFound("no endpoint \(head.method) \(path)")
        }
    }

    // MARK: pairing

    /// Constant-time comparison of the bearer token.
    private func authorized(_ header: String?) -> Bool {
        guard let header, let space = header.firstIndex(of: " "),
              header[..<space].lowercased() == "bearer" else { return false }
        let given = Array(header[header.index(after: space)...].trimmingCharacters(in: .whitespaces).utf8)
        let expected = Array(token.utf8)
        var diff: UInt8 = given.count == expected.count ? 0 : 1
        for i in 0..<max(given.count, expected.count) {
            diff |= (i < given.count ? given[i] : 0) ^ (i < expected.count ? expected[i] : 0)
        }
        return diff == 0
    }

    private func validName(_ name: String) -> Bool {
        name.range(of: "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", options: .regularExpression) != nil && !name.contains("..")
    }

    // MARK: GET /v1/info

    func info() -> Info {
        let v = ProcessInfo.processInfo.operatingSystemVersion
        let version = "\(v.majorVersion).\(v.minorVersion).\(v.patchVersion)"
        return Info(app_version: Bundle.main.object(forInfoDictionaryKey: "CFBundleShortVersionString") as? String ?? "0",
                    model: modelIdentifier(), system: "iOS", system_version: version, thermal_state: thermalState(),
                    runtimes: [RuntimeInfo(format: "mlpackage", runtime: "Core ML (iOS \(version))",
                                           compute_units: units.available, compute_units_used: units.used)],
                    limits: limits)
    }

    // MARK: PUT /v1/models/{name}

    private func upload(_ name: String, _ data: Data) throws -> UploadResponse {
        if models[name] == nil && models.count >= limits.max_models { throw WireError.tooManyModels(limits.max_models) }
        let tmp = store.appendingPathComponent(".upload-\(UUID().uuidString)", isDirectory: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let manifest = try unpack(data, into: tmp)
        let folder = store.appendingPathComponent(name, isDirectory: true)
        loaded = loaded.filter { !$0.key.hasPrefix(name + "|") }
        try? FileManager.default.removeItem(at: folder)  // the replaced model, with its compiled .mlmodelc
        try FileManager.default.moveItem(at: tmp, to: folder)
        models[name] = (manifest, data.count)
        log("stored \(name) (\(data.count) bytes)")
        return UploadResponse(model: name, format: manifest.format, bytes: data.count)
    }

    /// A member name is safe when it is relative, has no "..", no backslash, no drive letter, no NUL.
    private func safeMember(_ path: String) -> Bool {
        if path.isEmpty || path.hasPrefix("/") || path.contains("\\") || path.contains("\0") { return false }
        if path.range(of: "^[A-Za-z]:", options: .regularExpression) != nil { return false }
        let parts = path.split(separator: "/").filter { $0 != "." }
        return !parts.isEmpty && !parts.contains("..")
    }

    /// A member's path without empty and "." parts: "a//./b/" and "a/b" are one path.
    private func normal(_ path: String) -> String {
        path.split(separator: "/").filter { $0 != "." }.joined(separator: "/")
    }

    /// The product of a shape's dimensions, or nil when it overflows (a hostile manifest) or a dimension is not positive.
    private func elements(_ shape: [Int]) -> Int? {
        var n = 1
        for d in shape {
            guard d > 0 else { return nil }
            let (m, overflow) = n.multipliedReportingOverflow(by: d)
            if overflow { return nil }
            n = m
        }
        return n
    }

    private func unpack(_ data: Data, into dest: URL) throws -> Manifest {
        let archive: Archive
        do { archive = try Archive(data: data, accessMode: .read) } catch {
            throw WireError.badArchive("the upload is not a zip archive")
        }
        let entries = Array(archive)
        guard entries.count <= limits.max_files else {
            throw WireError.tooLarge("archive has \(entries.count) entries (limit \(limits.max_files))")
        }
        var total: UInt64 = 0
        var files = Set<String>()
        var folders = Set<String>()
        for entry in entries {  // check everything before writing anything
            guard safeMember(entry.path) else { throw WireError.unsafeArchive("unsafe path in archive: '\(entry.path)'") }
            guard entry.type != .symlink else { throw WireError.unsafeArchive("link in archive: '\(entry.path)'") }
            let path = normal(entry.path)
            if entry.type == .directory {
                folders.insert(path)
            } else if !files.insert(path).inserted {
                throw WireError.badArchive("duplicate entry in archive: '\(entry.path)'")
            }
            let parts = path.split(separator: "/")
            for i in parts.indices.dropLast() { folders.insert(parts[...i].joined(separator: "/")) }
            let (sum, overflow) = total.addingReportingOverflow(entry.uncompressedSize)
            total = overflow ? UInt64.max : sum
        }
        if let clash = files.intersection(folders).sorted().first {
            throw WireError.badArchive("entry '\(clash)' is both a file and a folder in the archive")
        }
        guard total <= UInt64(limits.max_unpacked_bytes) else {
            throw WireError.tooLarge("archive unpacks to \(total) bytes (limit \(limits.max_unpacked_bytes))")
        }
        guard let manifestEntry = archive["manifest.json"] else { throw WireError.badArchive("archive has no manifest.json") }
        var manifestData = Data()
        do {
            _ = try archive.extract(manifestEntry) { chunk in
                manifestData.append(chunk)
                if manifestData.count > self.limits.max_json_bytes { throw WireError.badArchive("manifest.json is too large") }
            }
        } catch let e as WireError { throw e } catch {
            throw WireError.badArchive("cannot extract 'manifest.json': \(error.localizedDescription)")
        }
        guard let manifest = try? JSONDecoder().decode(Manifest.self, from: manifestData) else {
            throw WireError.badArchive("manifest.json: expected protocol, format, model and input")
        }
        let names = Set(entries.map(\.path))
        guard manifest.protocolVersion == Wire.version else { throw WireError.badArchive("manifest.json: protocol is not 1") }
        guard manifest.format == "mlpackage" else { throw WireError.unsupportedFormat(manifest.format) }
        guard !manifest.model.contains("/"), names.contains(where: { $0.hasPrefix(manifest.model + "/") }) else {
            throw WireError.badArchive("manifest.json: model '\(manifest.model)' is not in the archive")
        }
        let shape = manifest.input.shape
        guard manifest.input.dtype == "float32", names.contains(manifest.input.file), (1...8).contains(shape.count),
              let count = elements(shape) else {
            throw WireError.badArchive("manifest.json: input: expected {file, dtype: float32, shape} naming a file in the archive")
        }
        guard count <= limits.max_input_elements else {
            throw WireError.tooLarge("input has \(count) elements (limit \(limits.max_input_elements))")
        }
        let root = dest.standardizedFileURL.path + "/"
        var written = 0  // counted as it inflates: the sizes in the directory can lie
        for entry in entries where entry.type == .file {
            let target = dest.appendingPathComponent(entry.path).standardizedFileURL
            guard target.path.hasPrefix(root) else { throw WireError.unsafeArchive("unsafe path in archive: '\(entry.path)'") }
            try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: target.path, contents: nil) else {
                throw WireError.internalError("cannot create \(entry.path)")
            }
            let out = try FileHandle(forWritingTo: target)
            defer { try? out.close() }
            do {
                _ = try archive.extract(entry) { chunk in
                    written += chunk.count
                    if written > self.limits.max_unpacked_bytes {
                        throw WireError.tooLarge("archive unpacks to more than \(self.limits.max_unpacked_bytes) bytes")
                    }
                    try out.write(contentsOf: chunk)
                }
            } catch let e as WireError { throw e } catch {  // damaged data, a CRC or size that lies
                throw WireError.badArchive("cannot extract '\(entry.path)': \(error.localizedDescription)")
            }
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: dest.appendingPathComponent(manifest.input.file).path)[.size] as? Int) ?? -1
        guard size == 4 * count else {
            throw WireError.badArchive("input.bin has \(size) bytes, the shape needs \(4 * count)")
        }
        return manifest
    }

    // MARK: DELETE /v1/models/{name}

    private func delete(_ name: String) throws -> DeleteResponse {
        guard models.removeValue(forKey: name) != nil else { throw WireError.notFound("no model named '\(name)'") }
        loaded = loaded.filter { !$0.key.hasPrefix(name + "|") }
        try? FileManager.default.removeItem(at: store.appendingPathComponent(name, isDirectory: true))  // and its .mlmodelc
        return DeleteResponse(deleted: name)
    }

    // MARK: POST /v1/models/{name}/run

    private func run(_ name: String, _ r: RunRequest) throws -> RunResponse {
        let all: [String: MLComputeUnits] = ["cpuOnly": .cpuOnly, "cpuAndGPU": .cpuAndGPU,
                                             "cpuAndNeuralEngine": .cpuAndNeuralEngine, "all": .all]
        guard let computeUnits = all[r.compute_units] else {
            throw WireError.badRequest("compute_units '\(r.compute_units)': expected one of \(Wire.computeUnits.joined(separator: ", "))")
        }
        guard units.available.contains(r.compute_units) else {
            throw WireError.badRequest("compute_units '\(r.compute_units)' is not available for mlpackage here "
                                       + "(available: \(units.available.joined(separator: ", ")))")
        }
        // the bounds of the reference companion (LoopConfig): min_runs >= 1, target_sample_s <= max_time_s
        guard r.min_runs >= 1, r.warmup_runs >= 0, r.max_runs >= r.min_runs, r.max_runs <= limits.max_runs,
              r.warmup_runs <= limits.max_warmup_runs, r.max_time_s > 0, r.max_time_s <= limits.max_time_s,
              r.warmup_min_s >= 0, r.warmup_min_s <= limits.max_time_s, r.min_time_s >= 0, r.min_time_s <= r.max_time_s,
              r.target_sample_s >= 0, r.target_sample_s <= r.max_time_s else {
            throw WireError.badRequest("run request out of bounds (see limits in GET /v1/info)")
        }
        guard let stored = models[name] else { throw WireError.notFound("no model named '\(name)'") }
        let folder = store.appendingPathComponent(name, isDirectory: true)
        let start = now()
        let model: MLModel
        let provider: MLFeatureProvider
        do {
            let key = "\(name)|\(r.compute_units)"
            if let m = loaded[key] {
                model = m
            } else {
                let config = MLModelConfiguration()
                config.computeUnits = computeUnits
                model = try MLModel(contentsOf: try compiled(folder, stored.manifest), configuration: config)
                loaded[key] = model
            }
            provider = try inputProvider(model, folder: folder, manifest: stored.manifest)
        } catch {
            throw WireError.runFailed("\(name): the model could not be compiled or run: \(error.localizedDescription)")
        }
        let loadS = now() - start
        do {
            let first = try model.prediction(from: provider)
            let (samples, repeats, capped, elapsed) = try runLoop({ _ = try model.prediction(from: provider) }, r)
            var output: OutputArray?
            if r.return_output, let outName = model.modelDescription.outputDescriptionsByName.keys.sorted().first,
               let array = first.featureValue(for: outName)?.multiArrayValue {
                output = encode(array)
            }
            let used = units.used[r.compute_units] ?? r.compute_units
            log("ran \(name): \(samples.count) samples, \(r.compute_units) (runs as \(used))")
            return RunResponse(model: name, compute_units: r.compute_units, compute_units_used: used,
                               runtime: info().runtimes[0].runtime,
                               timings_us: samples.map { $0 * 1e6 }, repeats: repeats, capped: capped,
                               elapsed_s: elapsed, load_s: loadS, thermal_state: thermalState(), output: output)
        } catch {
            throw WireError.runFailed("\(name): the model could not be compiled or run: \(error.localizedDescription)")
        }
    }

    /// The model compiled once, kept inside the model's folder: deleting or replacing the model deletes it,
    /// and nothing is left in tmp (MLModel.compileModel writes a new .mlmodelc there on every call).
    private func compiled(_ folder: URL, _ manifest: Manifest) throws -> URL {
        let kept = folder.appendingPathComponent(".compiled.mlmodelc", isDirectory: true)
        if FileManager.default.fileExists(atPath: kept.path) { return kept }
        let temporary = try MLModel.compileModel(at: folder.appendingPathComponent(manifest.model))
        do {
            try FileManager.default.moveItem(at: temporary, to: kept)
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
        return kept
    }

    private func inputProvider(_ model: MLModel, folder: URL, manifest: Manifest) throws -> MLFeatureProvider {
        let data = try Data(contentsOf: folder.appendingPathComponent(manifest.input.file))
        let array = try MLMultiArray(shape: manifest.input.shape.map { NSNumber(value: $0) }, dataType: .float32)
        data.withUnsafeBytes { raw in array.dataPointer.copyMemory(from: raw.baseAddress!, byteCount: data.count) }
        let inputName = model.modelDescription.inputDescriptionsByName.keys.sorted().first ?? "input"
        return try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)])
    }

    /// The first output as float32 in C order (read element by element: outputs may be strided or fp16).
    private func encode(_ a: MLMultiArray) -> OutputArray {
        let shape = a.shape.map(\.intValue)
        var values = [Float]()
        values.reserveCapacity(a.count)
        var index = [Int](repeating: 0, count: shape.count)
        for _ in 0..<a.count {
            values.append(a[index.map { NSNumber(value: $0) }].floatValue)
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
        }
        let data = values.withUnsafeBufferPointer { Data(buffer: $0) }
        return OutputArray(shape: shape, data: data.base64EncodedString())
    }
}

// MARK: fbprof's measuring loop (fbprof/profiler/loop.py run_loop), seconds

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func runLoop(_ predict: () throws -> Void, _ r: RunRequest) rethrows -> ([Double], Int, Bool, Double) {
    let start = now()
    var done = 0
    while done < r.warmup_runs || now() - start < r.warmup_min_s {  // 1. warm-up
        let t0 = now()
        try predict()
        done += 1
        if now() - t0 > r.max_time_s { break }
    }
    let t0 = now()  // 2. calibration: repeats so that one sample lasts about target_sample_s
    try predict()
    let one = max(now() - t0, 1e-9)
    // clamped as a Double first: Int(x) traps when x is beyond Int's range (a huge target_sample_s)
    let ratio = (r.target_sample_s / one).rounded(.up)
    let repeats = r.target_sample_s > 0 && ratio.isFinite ? Int(max(1, min(10_000, ratio))) : (r.target_sample_s > 0 ? 10_000 : 1)
    var samples: [Double] = []  // 3. samples until min_runs and min_time_s, capped by max_runs and max_time_s
    var capped = false
    let sampling = now()
    while true {
        let elapsed = now() - sampling
        if samples.count >= r.min_runs && elapsed >= r.min_time_s { break }
        if samples.count >= r.max_runs || elapsed >= r.max_time_s {
            capped = samples.count < r.min_runs
            break
        }
        let t = now()
        for _ in 0..<repeats { try predict() }
        samples.append((now() - t) / Double(repeats))
    }
    return (samples, repeats, capped, now() - start)
}

func thermalState() -> String {
    switch ProcessInfo.processInfo.thermalState {
    case .nominal: return "nominal"
    case .fair: return "fair"
    case .serious: return "serious"
    case .critical: return "critical"
    @unknown default: return "unknown"
    }
}

/// The model identifier, e.g. "iPhone10,3" for an iPhone X.
func modelIdentifier() -> String {
    var info = utsname()
    uname(&info)
    return withUnsafeBytes(of: &info.machine) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

// MARK: wrong-token lock-out (fbprof/companion/server.py Lockout)

struct Lockout {
    private var wrong = 0  // wrong tokens since the last lock-out (or success)
    private var lockouts = 0  // lock-outs since the last success
    private var until = -Double.infinity

    func waitS(now: Double) -> Double { max(0, until - now) }

    mutating func failed(now: Double) {
        wrong += 1
        guard wrong >= Wire.lockoutFailures else { return }
        wrong = 0
        lockouts += 1
        until = now + min(Wire.lockoutMaxS, Wire.lockoutBaseS * pow(2, Double(min(lockouts - 1, 30))))
    }

    mutating func succeeded() {
        wrong = 0
        lockouts = 0
    }
}

// MARK: compute units per device generation

/// What Core ML can use here. Core ML runs on the Neural Engine from the A12 on (iPhone XS/XR, iPhone11,x;
/// iPads from iPad8,x); on the A11 (iPhone X, iPhone10,x) and older it silently runs `cpuAndNeuralEngine`
/// on the CPU and `all` on CPU and GPU, so those are listed as what they are.
struct ComputeUnitsOnThisDevice {
    let available: [String]
    let used: [String: String]

    init(identifier: String = modelIdentifier()) {
        if ComputeUnitsOnThisDevice.hasNeuralEngine(identifier) {
            available = Wire.computeUnits
            used = Dictionary(uniqueKeysWithValues: Wire.computeUnits.map { ($0, $0) })
        } else {
            available = ["cpuOnly", "cpuAndGPU", "all"]
            used = ["cpuOnly": "cpuOnly", "cpuAndGPU": "cpuAndGPU", "all": "cpuAndGPU"]
        }
    }

    static func hasNeuralEngine(_ identifier: String) -> Bool {
        for (family, first) in [("iPhone", 11), ("iPad", 8), ("iPod", Int.max)] where identifier.hasPrefix(family) {
            let major = identifier.dropFirst(family.count).prefix(while: { $0.isNumber })
            guard let n = Int(major) else { return false }
            return n >= first
        }
        return identifier == "arm64"  // an iPad app on an Apple-silicon Mac; "x86_64" is a simulator on Intel
    }
}
