"""Names the seed gives people and companies, and the load test types into search: one
list for both, so searches find what was seeded (small and embedded: no Faker)."""

from __future__ import annotations

# fmt: off
FIRST_NAMES = (
    "Ada", "Alan", "Alice", "Amara", "Andre", "Anna", "Arjun", "Ava", "Ben", "Bianca",
    "Carlos", "Chen", "Chloe", "Daniel", "Diego", "Elena", "Emil", "Emma", "Fatima", "Felix",
    "Grace", "Hannah", "Hiro", "Ines", "Isaac", "Jack", "Jana", "Javier", "Julia", "Kai",
    "Karin", "Lars", "Leila", "Liam", "Lucia", "Maja", "Marco", "Maria", "Mateo", "Mei",
    "Mia", "Noah", "Nora", "Olga", "Omar", "Paul", "Priya", "Rafael", "Rosa", "Sam",
    "Sara", "Sofia", "Tariq", "Theo", "Tom", "Valentina", "Victor", "Yara", "Yusuf", "Zoe",
)
LAST_NAMES = (
    "Adams", "Ahmed", "Andersen", "Baker", "Bauer", "Becker", "Bianchi", "Brown", "Castro",
    "Chen", "Clarke", "Costa", "Dubois", "Eriksson", "Evans", "Fischer", "Garcia", "Gomez",
    "Green", "Hansen", "Hoffmann", "Hughes", "Ivanova", "Jensen", "Johnson", "Kaur", "Kim",
    "Klein", "Kowalski", "Larsen", "Laurent", "Lee", "Lopez", "Martin", "Meyer", "Moreau",
    "Muller", "Murphy", "Nakamura", "Nguyen", "Nielsen", "Novak", "Okafor", "Olsen", "Patel",
    "Perez", "Petrov", "Rossi", "Russo", "Santos", "Schmidt", "Schneider", "Silva", "Singh",
    "Smith", "Sousa", "Tanaka", "Taylor", "Thomas", "Walker", "Wang", "Weber", "Wilson",
    "Wright", "Yilmaz", "Young", "Zhang",
)
COMPANY_FIRST = (
    "Acme", "Apex", "Arrow", "Atlas", "Aurora", "Beacon", "Blue", "Bright", "Cedar",
    "Clear", "Cobalt", "Copper", "Crest", "Delta", "Evergreen", "Falcon", "First", "Granite",
    "Harbor", "Horizon", "Iron", "Juniper", "Keystone", "Lumen", "Maple", "Meridian", "Nimbus",
    "North", "Nova", "Oak", "Orbit", "Pine", "Pioneer", "Polar", "Quantum", "Redwood", "Silver",
    "Summit", "Terra", "Vertex",
)
COMPANY_SECOND = (
    "Analytics", "Bio", "Capital", "Cloud", "Dynamics", "Energy", "Foods", "Freight",
    "Health", "Industries", "Insights", "Labs", "Logistics", "Media", "Metrics", "Mobility",
    "Networks", "Partners", "Robotics", "Security", "Software", "Solutions", "Systems",
    "Technologies", "Telecom", "Textiles", "Therapeutics", "Ventures", "Works",
)
# fmt: on
