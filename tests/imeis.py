"""Valid test IMEIs (Luhn check digit computed, never typed by hand)."""

from stdnum import luhn


def imei(body: str) -> str:
    """The 15-digit IMEI for a 14-digit body."""
    assert len(body) == 14 and body.isdigit()
    return body + luhn.calc_check_digit(body)


HK = imei("35387923" + "425263")  # hk-global (TAC 35387923): territories HK, MO
HK2 = imei("86012345" + "000123")  # hk-global (range)
US = imei("35332211" + "000001")  # us-carrier: US, PR, GU, VI
EU = imei("35875421" + "000001")  # eu-distri: FR, DE, ...
UNKNOWN = imei("49015420" + "323751")  # no distributor
UNKNOWN2 = imei("49015420" + "323752")
