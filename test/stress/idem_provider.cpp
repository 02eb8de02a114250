// idem_provider: a flaky payment provider, a local process, for the demo's
// payment scene (demo/run) and idem_pay --provider. It charges a card once
// per idempotency key, as Stripe's Idempotency-Key does, however often it is
// called: a repeated call answers the first charge. It is flaky on purpose:
// a share of the calls fail before charging, and a share charge and then
// drop the connection without answering, so that the caller cannot tell
// whether the card was charged and has to call again.
//
//   idem_provider --port-file FILE --log FILE [--fail 0.2] [--seed 1]
//
// Listens on 127.0.0.1 (a port of the system's choosing, written to
// --port-file). A call is one line, "CHARGE key fence", answered "OK charge"
// or not at all. Every new charge is appended to --log as "key charge fence".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>

int main(int argc, char** argv)
{
    std::string port_file, log_file;
    double fail = 0.2;
    unsigned seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--port-file")
            port_file = argv[i + 1];
        else if (a == "--log")
            log_file = argv[i + 1];
        else if (a == "--fail")
            fail = std::atof(argv[i + 1]);
        else if (a == "--seed")
            seed = static_cast<unsigned>(std::atoi(argv[i + 1]));
    }
    if (port_file.empty() || log_file.empty()) {
        std::cerr << "usage: idem_provider --port-file FILE --log FILE [--fail 0.2] [--seed 1]\n";
        return 2;
    }
    int server = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (server < 0 || bind(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(server, 64) != 0) {
        std::perror("idem_provider: listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(server, reinterpret_cast<sockaddr*>(&addr), &len);
    std::ofstream(port_file) << ntohs(addr.sin_port) << "\n";

    std::map<std::string, long> charges;  // idempotency key -> charge
    std::ofstream log(log_file, std::ios::app);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dice(0, 1);
    for (long next_charge = 1;;) {
        int client = accept(server, nullptr, nullptr);
        if (client < 0)
            continue;
        char buf[512];
        ssize_t n = read(client, buf, sizeof buf - 1);
        if (n <= 0) {
            close(client);
            continue;
        }
        buf[n] = '\0';
        char key[400];
        long long fence = 0;
        if (std::sscanf(buf, "CHARGE %399s %lld", key, &fence) != 2 || dice(rng) < fail / 2) {
            close(client);  // failed before charging
            continue;
        }
        auto found = charges.find(key);
        long charge = found != charges.end() ? found->second : next_charge++;
        if (found == charges.end()) {
            charges[key] = charge;
            log << key << " " << charge << " " << fence << std::endl;
        }
        if (dice(rng) < fail / 2) {
            close(client);  // charged, but the answer is lost
            continue;
        }
        std::string answer = "OK " + std::to_string(charge) + "\n";
        (void)!write(client, answer.data(), answer.size());
        close(client);
    }
}
