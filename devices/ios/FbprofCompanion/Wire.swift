// The companion protocol's wire format (docs/companion-protocol.md, version 1).
// Property names are the JSON field names, so this file reads like the fixtures in
// tests/fixtures/companion/ (the Python tests check that every field name appears here).

import Foundation

enum Wire {
    static let version = 1
    static let api = "/v1"
    static let serviceType = "_fbprof._tcp"
    static let defaultPort: UInt16 = 8765
    static let computeUnits = ["cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"]
    static let unauthorizedMessage = "missing or wrong pairing token: send the header 'Authorization: Bearer <token>'"
    /// pairing tokens: at least this many characters (fbprof/companion/protocol.py MIN_TOKEN_CHARS)
    static let minTokenChars = 16
    /// wrong-token lock-out (protocol.py LOCKOUT_*): after lockoutFailures wrong tokens in a row every request
    /// gets 429 for lockoutBaseS seconds, doubled at each further lock-out up to lockoutMaxS
    static let lockoutFailures = 10
    static let lockoutBaseS = 1.0
    static let lockoutMaxS = 300.0
}

/// What this companion accepts; reported in the info response.
struct Limits: Codable {
    var max_upload_bytes = 64 << 20
    var max_unpacked_bytes = 256 << 20
    var max_files = 1024
    var max_models = 16
    var max_runs = 10_000
    var max_warmup_runs = 1_000
    var max_time_s = 120.0
    var max_input_elements = 1 << 24
    var max_json_bytes = 64 << 10
}

// GET /v1/info
struct RuntimeInfo: Codable {
    let format: String
    let runtime: String
    let compute_units: [String]  // the units this device really has (no cpuAndNeuralEngine on A11 and older)
    let compute_units_used: [String: String]  // each listed unit -> what Core ML really runs on
}

struct Info: Encodable {
    let protocolVersion = Wire.version
    let app = "fbprof-companion"
    let app_version: String
    let model: String
    let system: String
    let system_version: String
    let thermal_state: String
    let runtimes: [RuntimeInfo]
    let limits: Limits

    enum CodingKeys: String, CodingKey {
        case protocolVersion = "protocol"
        case app, app_version, model, system, system_version, thermal_state, runtimes, limits
    }
}

// PUT /v1/models/{name}: manifest.json inside the zip
struct Manifest: Decodable {
    struct Input: Decodable {
        let file: String
        let dtype: String
        let shape: [Int]
    }

    let protocolVersion: Int
    let format: String
    let model: String
    let input: Input

    enum CodingKeys: String, CodingKey {
        case protocolVersion = "protocol"
        case format, model, input
    }
}

struct UploadResponse: Encodable {
    let model: String
    let format: String
    let bytes: Int
}

// GET /v1/models
struct ModelEntry: Encodable {
    let name: String
    let format: String
    let bytes: Int
}

struct ModelsResponse: Encodable {
    let models: [ModelEntry]
}

// DELETE /v1/models/{name}
struct DeleteResponse: Encodable {
    let deleted: String
}

// POST /v1/models/{name}/run: the loop fields of fbprof's LoopConfig; absent fields take its defaults
struct RunRequest: Decodable {
    var compute_units = "all"
    var warmup_runs = 3
    var warmup_min_s = 0.05
    var min_runs = 50
    var min_time_s = 0.25
    var max_runs = 10_000
    var max_time_s = 10.0
    var target_sample_s = 0.005
    var return_output = false

    enum CodingKeys: String, CodingKey {
        case compute_units, warmup_runs, warmup_min_s, min_runs, min_time_s, max_runs, max_time_s, target_sample_s
        case return_output
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        compute_units = try c.decodeIfPresent(String.self, forKey: .compute_units) ?? compute_units
        warmup_runs = try c.decodeIfPresent(Int.self, forKey: .warmup_runs) ?? warmup_runs
        warmup_min_s = try c.decodeIfPresent(Double.self, forKey: .warmup_min_s) ?? warmup_min_s
        min_runs = try c.decodeIfPresent(Int.self, forKey: .min_runs) ?? min_runs
        min_time_s = try c.decodeIfPresent(Double.self, forKey: .min_time_s) ?? min_time_s
        max_runs = try c.decodeIfPresent(Int.self, forKey: .max_runs) ?? max_runs
        max_time_s = try c.decodeIfPresent(Double.self, forKey: .max_time_s) ?? max_time_s
        target_sample_s = try c.decodeIfPresent(Double.self, forKey: .target_sample_s) ?? target_sample_s
        return_output = try c.decodeIfPresent(Bool.self, forKey: .return_output) ?? return_output
    }
}

struct OutputArray: Encodable {
    let shape: [Int]
    let dtype = "float32"
    let data: String  // base64 of little-endian float32, C order
}

struct RunResponse: Encodable {
    let model: String
    let compute_units: String
    let compute_units_used: String
    let runtime: String
    let timings_us: [Double]
    let repeats: Int
    let capped: Bool
    let elapsed_s: Double
    let load_s: Double
    let thermal_state: String
    let output: OutputArray?  // left out unless return_output
}

/// Every refusal: HTTP status plus {"error": code, "message": text}.
struct WireError: Error, Encodable {
    let status: Int
    let error: String
    let message: String
    var retryAfter: Int? = nil  // seconds, sent as the Retry-After header (429)

    enum CodingKeys: String, CodingKey { case error, message }

    static func tooManyAttempts(_ seconds: Int) -> WireError {
        WireError(status: 429, error: "too_many_attempts",
                  message: "too many wrong pairing tokens: this companion refuses every request for \(seconds) s",
                  retryAfter: seconds)
    }

    static let unauthorized = WireError(status: 401, error: "unauthorized", message: Wire.unauthorizedMessage)
    static let lengthRequired = WireError(status: 411, error: "length_required",
                                          message: "send the body with a Content-Length header")
    static func tooLarge(_ m: String) -> WireError { WireError(status: 413, error: "too_large", message: m) }
    static func badName(_ name: String) -> WireError {
        WireError(status: 400, error: "bad_name",
                  message: "invalid model name '\(name)': use 1 to 64 characters A-Z a-z 0-9 . _ - (not starting with . _ -)")
    }
    static func badArchive(_ m: String) -> WireError { WireError(status: 400, error: "bad_archive", message: m) }
    static func unsafeArchive(_ m: String) -> WireError { WireError(status: 400, error: "unsafe_archive", message: m) }
    static func badRequest(_ m: String) -> WireError { WireError(status: 400, error: "bad_request", message: m) }
    static func notFound(_ m: String) -> WireError { WireError(status: 404, error: "not_found", message: m) }
    static func badMethod(_ m: String) -> WireError { WireError(status: 405, error: "bad_method", message: m) }
    static func tooManyModels(_ n: Int) -> WireError {
        WireError(status: 409, error: "too_many_models",
                  message: "the companion holds \(n) models (limit \(n)); delete some first")
    }
    static func unsupportedFormat(_ f: String) -> WireError {
        WireError(status: 415, error: "unsupported_format",
                  message: "format '\(f)' cannot run on this companion (it runs: mlpackage)")
    }
    static func runFailed(_ m: String) -> WireError { WireError(status: 422, error: "run_failed", message: m) }
    static func internalError(_ m: String) -> WireError { WireError(status: 500, error: "internal", message: m) }
}
